"""The Spark session: `local[*]` by default, a standalone or Kubernetes cluster when `spark_master`
says so, or a Spark Connect server (`sc://host:port`), which the steps of a local run share."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import yaml
from pyspark.sql import SparkSession

from propensity.catalog import EXTENSIONS, spark_catalog_conf
from propensity.errors import PropensityError
from propensity.jvm import class_path, jar_cache
from propensity.ports import free_port, stop_process
from propensity.settings import POD_ACCOUNT, SECRET, SECRET_SETTINGS, Settings, get_settings, pod_namespace

LOG_CONFIG = Path(__file__).with_name("log4j2.properties")


# Security lint (B104): the driver in a pod must accept its executors on the pod's IP; the
# NetworkPolicies (manifests/base) limit who may connect.
ALL_INTERFACES = "0.0.0.0"  # nosec B104


# The AWS SDK's S3 client (Iceberg's S3FileIO) adds request checksums that S3-compatible stores such as
# SeaweedFS refuse ("The Content-Md5 you specified is not valid"): only where the API requires them.
AWS_SDK_OPTIONS = "-Daws.requestChecksumCalculation=when_required -Daws.responseChecksumValidation=when_required"


def spark_conf(settings: Settings) -> dict[str, str]:
    """The session's configuration: the same tables and types however Spark runs."""
    jars = class_path()
    conf = {
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.session.timeZone": "UTC",
        # The lake's timestamps are UTC wall-clock times without a zone, as pandas and Feast read them.
        "spark.sql.timestampType": "TIMESTAMP_NTZ",
        # pandas writes nanosecond timestamps, which Spark reads only as integers (see lake.read_file).
        "spark.sql.legacy.parquet.nanosAsLong": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.local.dir": str(settings.scratch_dir / "spark"),
        "spark.driver.extraJavaOptions": " ".join(
            option
            for option in (
                f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}",
                AWS_SDK_OPTIONS,
                settings.spark_driver_java_options.strip(),
                *class_archive_options(jars),
            )
            if option
        ),
        "spark.executor.extraJavaOptions": AWS_SDK_OPTIONS,
        # Credentials reach executors as settings: keep them out of Spark's UI and event logs.
        "spark.redaction.regex": "(?i)secret|password|token|access[.-]key|cookies|feast_registry|propensity_catalog",
        # The table format, its catalog and S3 clients (propensity/jvm.lock), sent to every executor.
        "spark.jars": ",".join(str(path) for path in jars),
        "spark.sql.extensions": EXTENSIONS,  # Iceberg's SQL: maintenance procedures (expire snapshots)
    }
    if not settings.spark_master.startswith("local"):
        # Executors are other processes (other machines): they run the project's interpreter (the
        # same image on Kubernetes), reach the driver at its advertised address, and see every
        # setting of the driver's process, so their Python code (the scoring and push workers) is
        # configured like the driver.
        conf["spark.executorEnv.PYSPARK_PYTHON"] = sys.executable
        conf["spark.executor.memory"] = settings.spark_executor_memory
        env = settings.as_env()
        if settings.spark_master.startswith("k8s://"):
            # Executor pods read credentials from the Secret themselves (pod template), never from
            # the pod spec the driver writes.
            env = {k: v for k, v in env.items() if k.removeprefix("PROPENSITY_").lower() not in SECRET_SETTINGS}
        conf.update({f"spark.executorEnv.{key}": value for key, value in env.items()})
        if settings.spark_driver_host:
            conf["spark.driver.host"] = settings.spark_driver_host
    if settings.spark_master.startswith("k8s://"):
        conf.update(kubernetes_conf(settings))
    return conf


# The driver's JVM loads some twenty thousand classes of Spark, Iceberg and Parquet before its first
# query, and every local session, test process and run's Spark Connect server starts one. A class
# data-sharing archive of them (the JDK's CDS), dumped once at setup by `python -m propensity.spark
# archive`, lets a JVM map them already parsed and verified: measured on 2 cores, a session's start
# 8.5 -> 5.1 s and its first ingest 13.8 -> 11.6 s (docs/decisions.md). The JVM accepts an archive
# only for the class path it was dumped with: its name is a digest of the JVM, pyspark's jars and the
# locked jars, so any change of them looks for (and finds no) other archive, and nothing is passed.
ARCHIVE_LOGGING = "-Xlog:cds=off,cds+dynamic=off"  # a rejected archive is silently not used


def _java() -> Path | None:
    """The java that pyspark's launcher runs: JAVA_HOME's, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def class_archive(jars: list[Path] | None = None) -> Path | None:
    """Where the class archive for this JVM, pyspark and jar set (the locked jars unless given) lives
    (None without a java)."""
    import pyspark

    java = _java()
    if java is None:
        return None
    digest = hashlib.sha256()
    for path in [java, *sorted((Path(pyspark.__file__).parent / "jars").glob("*.jar")), *(jars or class_path())]:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return jar_cache() / "class-archives" / f"spark-{digest.hexdigest()[:16]}.jsa"


def class_archive_options(jars: list[Path] | None = None) -> list[str]:
    """The driver's options that use the class archive, if setup dumped one for this class path."""
    archive = class_archive(jars)
    if archive is None or not archive.is_file():
        return []
    return [f"-XX:SharedArchiveFile={archive}", ARCHIVE_LOGGING]


def build_class_archive() -> Path | None:
    """Dump the class archive unless it exists: a local session in a new process on a throwaway home
    runs what the steps run (an Iceberg table written and read, a shuffle, Python workers through
    Arrow) and its JVM writes the classes it loaded as it exits. Written under another name first, so
    a killed build leaves no archive. None without a java."""
    archive = class_archive()
    if archive is None or archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_archives(archive.parent)
    partial = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
    keep = ("PROPENSITY_JARS", "PROPENSITY_MAVEN_REPOSITORY")  # none of the user's tables, catalog or stores
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPENSITY_") or k in keep}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            env.update(PROPENSITY_HOME=scratch, PROPENSITY_SPARK_MASTER="local[2]", PYSPARK_PYTHON=sys.executable)
            command = [sys.executable, "-m", "propensity.spark", "archive-workload", str(partial)]
            # Security lint (B603): this interpreter and module, argv list, no shell.
            done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)  # nosec B603
        if done.returncode != 0 or not partial.is_file():
            reason = (done.stderr.strip().splitlines() or ["no archive was written"])[-1]
            raise PropensityError(f"the Spark class archive could not be built: {reason}")
        archive.with_suffix(".interpreter").write_text(sys.executable)
        partial.replace(archive)
    finally:
        partial.unlink(missing_ok=True)
    return archive


def _remove_orphaned_archives(folder: Path) -> None:
    """Archives (some 180 MB each) of environments that are gone: each clone's venv has its own, and
    the jar cache is shared. Each archive names the interpreter whose environment it was dumped for."""
    for interpreter in folder.glob("spark-*.interpreter"):
        if not Path(interpreter.read_text()).exists():
            interpreter.with_suffix(".jsa").unlink(missing_ok=True)
            interpreter.unlink(missing_ok=True)


def _archive_workload(dump: Path) -> None:
    """What `build_class_archive` runs in its own process; the JVM dumps to `dump` when it exits."""
    import pandas as pd

    from propensity.catalog import table_name
    from propensity.tables import overwrite_partitions

    settings = get_settings()
    options = f"{settings.spark_driver_java_options} -XX:ArchiveClassesAtExit={dump}"
    settings = settings.with_values(spark_driver_java_options=options, spark_shuffle_partitions=2)
    spark = spark_session(settings, "propensity-class-archive")
    frame = spark.createDataFrame(
        pd.DataFrame({"customer_id": ["a", "b", "a"], "amount": [1.0, 2.0, 3.0], "day": ["d1", "d1", "d2"]})
    )
    overwrite_partitions(frame, settings, "class_archive_probe", "day")  # as the steps write: creates, commits
    table = table_name(settings, "class_archive_probe")
    read = spark.table(table).groupBy("customer_id").agg({"amount": "sum"})
    read.mapInPandas(lambda batches: batches, read.schema).toPandas()
    spark.table(table).join(read, "customer_id").where("amount > 1").toPandas()
    spark.stop()
    from pyspark import SparkContext

    process = SparkContext._gateway.proc if SparkContext._gateway else None
    if process is not None:  # the JVM exits when its stdin closes, and dumps as it exits
        process.stdin.close()
        process.wait(timeout=300)


def kubernetes_conf(settings: Settings) -> dict[str, str]:
    """Spark on Kubernetes in client mode: the driver is the pipeline step's process in its pod, the
    executors are pods of the project image that reach the driver at the pod's IP (the pipeline sets
    PROPENSITY_SPARK_DRIVER_HOST from the downward API: one address per pod, so concurrent runs
    never share a Service), on fixed ports a NetworkPolicy can allow."""
    if not settings.spark_driver_host:
        raise PropensityError("Spark on Kubernetes needs PROPENSITY_SPARK_DRIVER_HOST (the driver pod's IP)")
    namespace = settings.spark_namespace or pod_namespace()
    if not namespace:
        raise PropensityError("Spark on Kubernetes needs PROPENSITY_SPARK_NAMESPACE outside a pod")
    conf = {
        "spark.kubernetes.container.image": settings.spark_executor_image or settings.image,
        "spark.kubernetes.namespace": namespace,
        "spark.executor.instances": str(settings.spark_executor_instances),
        "spark.driver.bindAddress": ALL_INTERFACES,
        "spark.driver.port": "7078",
        "spark.blockManager.port": "7079",
        "spark.kubernetes.executor.deleteOnTermination": "true",
        # Least privilege (manifests/base/rbac.yaml lists what the driver may call): client mode has no
        # driver Service and the executors use no claims Spark creates, so Spark must not clean those up.
        "spark.kubernetes.driver.service.deleteOnTermination": "false",
        "spark.kubernetes.driver.ownPersistentVolumeClaim": "false",
        "spark.kubernetes.driver.reusePersistentVolumeClaim": "false",
        # Executor pods meet Pod Security "restricted" (with the template's security context).
        "spark.kubernetes.executor.securityContext.allowPrivilegeEscalation": "false",
        "spark.kubernetes.authenticate.executor.serviceAccountName": EXECUTOR_SERVICE_ACCOUNT,
    }
    template = settings.scratch_dir / "spark-executor-pod.yaml"
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_text(yaml.safe_dump(executor_pod_template(), sort_keys=False))
    conf["spark.kubernetes.executor.podTemplateFile"] = str(template)
    # Executors are owned by the step's pod (its name is the hostname) and go away with it.
    if os.environ.get("HOSTNAME"):
        conf["spark.kubernetes.driver.pod.name"] = os.environ["HOSTNAME"]
    if (POD_ACCOUNT / "token").is_file():
        conf["spark.kubernetes.authenticate.oauthTokenFile"] = str(POD_ACCOUNT / "token")
        conf["spark.kubernetes.authenticate.caCertFile"] = str(POD_ACCOUNT / "ca.crt")
    return conf


EXECUTOR_SERVICE_ACCOUNT = "propensity-spark-executor"  # manifests/base/serviceaccounts.yaml: no token, no Role


def executor_pod_template() -> dict[str, Any]:
    """What Spark adds to every executor pod it creates: the project's non-root security context
    (Pod Security "restricted"), its own ServiceAccount without a token, the credentials from the
    Secret (optional keys, as the pipeline steps get them: the object store's keys reach the tables).
    No volume: the tables are on the object store."""
    container: dict[str, Any] = {
        "name": "spark-executor",
        "envFrom": [{"secretRef": {"name": SECRET, "optional": True}}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod: dict[str, Any] = {
        "serviceAccountName": EXECUTOR_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,  # executors never call the Kubernetes API
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": {"app.kubernetes.io/name": "propensity"}},
        "spec": pod,
    }


CONNECT = "sc://"  # a spark_master of this scheme is a Spark Connect server


def is_connect(master: str) -> bool:
    return master.startswith(CONNECT)


# What a Spark Connect session sets itself: the SQL settings of `spark_conf` that a session may
# change (the server was started with the rest: the jars, the extensions, the local dir).
SESSION_CONF = (
    "spark.sql.sources.partitionOverwriteMode",
    "spark.sql.session.timeZone",
    "spark.sql.timestampType",
    "spark.sql.legacy.parquet.nanosAsLong",
    "spark.sql.execution.arrow.pyspark.enabled",
    "spark.sql.shuffle.partitions",
)


# pyspark dispatches SparkSession.getActiveSession() (which Feast's Spark store calls) to Spark
# Connect while this variable is set, for the whole process.
CONNECT_MODE = "SPARK_CONNECT_MODE_ENABLED"
_connect_sessions: dict[str, Any] = {}  # pyspark.sql.connect.session.SparkSession, same API


def _connect_session(url: str) -> SparkSession:
    """This process's session on the server at `url`: one per server, a new one once the server it
    had was stopped (a process may outlive a server: the demo's, a test's)."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    session = _connect_sessions.get(url)
    if session is None or session.is_stopped:
        os.environ[CONNECT_MODE] = "1"
        session = ConnectSession.builder.remote(url).create()
        _connect_sessions[url] = session
    return cast(SparkSession, session)


def _stop_connect_sessions(url: str) -> None:
    session = _connect_sessions.pop(url, None)
    if session is not None:
        session.stop()
    if not _connect_sessions:
        os.environ.pop(CONNECT_MODE, None)


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    if is_connect(settings.spark_master):
        # A thin client: no JVM in this process; the server runs the queries and the Python code
        # of mapInPandas in its own workers.
        spark = _connect_session(settings.spark_master)
        conf = spark_conf(settings)
        for key in SESSION_CONF:
            spark.conf.set(key, conf[key])
    else:
        os.environ.pop(CONNECT_MODE, None)  # a classic session in a process that had a Connect one
        # Python workers must run the same interpreter (and packages) as the driver.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
        for key, value in spark_conf(settings).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        set_log_level(spark, "ERROR")
    # The catalog of these settings, also on a session created for others (one session per process).
    for key, value in spark_catalog_conf(settings).items():
        spark.conf.set(key, value)
    return spark


def set_log_level(spark: SparkSession, level: str) -> None:
    """The driver's log level; a Spark Connect client has no driver (the server logs to its file)."""
    if not is_connect_session(spark):
        spark.sparkContext.setLogLevel(level)


def is_connect_session(spark: SparkSession) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def default_parallelism(spark: SparkSession) -> int:
    """The cores Spark schedules tasks on; a Spark Connect client cannot ask the scheduler, and takes
    the session's shuffle partitions (set from `spark_shuffle_partitions`)."""
    if is_connect_session(spark):
        return int(spark.conf.get("spark.sql.shuffle.partitions") or 1)
    return int(spark.sparkContext.defaultParallelism)


CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"

# A step killed outright (SIGKILL, as a pod is) leaves its query running on the server, which does
# not notice a client's death: without these it would commit minutes later, racing a rerun. A client
# reattaches to its query's response stream every `senderMaxStreamDuration`; the server interrupts a
# query no client has reattached to for `detachedTimeout` (checked every `maintenanceInterval`). So a
# killed step's query stops within about 17 s, before its commit; a live client never notices.
CONNECT_SERVER_CONF = {
    "spark.connect.execute.reattachable.senderMaxStreamDuration": "5s",
    "spark.connect.execute.manager.detachedTimeout": "10s",
    "spark.connect.execute.manager.maintenanceInterval": "2s",
}


@contextmanager
def connect_server(settings: Settings, timeout: float = 180.0) -> Iterator[str]:
    """A Spark Connect server on 127.0.0.1 for the steps of a local run (`spark_master` as set,
    local[*] by default, with the project's configuration), stopped on exit. Yields its address,
    the `spark_master` the steps connect to. Its Python workers run this interpreter with these
    settings in their environment, as a step's own would."""
    import pyspark

    port = free_port()
    conf = {
        **spark_conf(settings),
        **spark_catalog_conf(settings),
        **CONNECT_SERVER_CONF,
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
    }
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    command = [str(submit), "--master", settings.spark_master, "--name", "propensity-connect"]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    command += ["--class", CONNECT_SERVER_CLASS]
    env = {**os.environ, **settings.as_env(), "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    log_path = settings.logs_dir / "spark-connect.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        # Security lint (B603): pyspark's own launcher, argv list, no shell.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)  # nosec B603
    url = f"{CONNECT}127.0.0.1:{port}"
    try:
        _wait_for_port(process, port, log_path, timeout)
        yield url
    finally:
        _stop_connect_sessions(url)
        stop_process(process)


def starts_run_server(settings: Settings) -> bool:
    """Whether a local run starts one Spark for its steps: with a local master it does; a cluster
    master (standalone, Kubernetes, a Spark Connect endpoint) is the run's Spark already."""
    return settings.spark_master.startswith("local")


@contextmanager
def run_spark(settings: Settings) -> Iterator[Settings]:
    """The settings the steps of one local run get: with a local master, the address of one Spark
    Connect server for the whole run (stopped on exit), so no step starts a JVM of its own; any other
    master as it is."""
    if not starts_run_server(settings):
        yield settings
        return
    with connect_server(settings) as url:
        yield settings.model_copy(update={"spark_master": url})


def _wait_for_port(process: subprocess.Popen[Any], port: int, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            process.kill()
            raise PropensityError(f"the Spark Connect server did not listen within {timeout:.0f}s; see {log_path}")
        time.sleep(0.2)
    raise PropensityError(f"the Spark Connect server exited with code {process.returncode}; see {log_path}")


# What Spark on Kubernetes sets in an executor pod, and the executor backend's flag for each.
EXECUTOR_ARGS = {
    "SPARK_DRIVER_URL": "--driver-url",
    "SPARK_EXECUTOR_ID": "--executor-id",
    "SPARK_EXECUTOR_CORES": "--cores",
    "SPARK_APPLICATION_ID": "--app-id",
    "SPARK_EXECUTOR_POD_IP": "--hostname",
    "SPARK_RESOURCE_PROFILE_ID": "--resourceProfileId",
    "SPARK_EXECUTOR_POD_NAME": "--podName",
}


def executor_command(env: dict[str, str]) -> list[str]:
    """The JVM command of a Spark executor pod started from the project image (what Spark's own
    image entrypoint runs for its `executor` argument), built from the pod's environment: the
    executor backend on pyspark's jars, with the Java options the driver set."""
    missing = [name for name in [*EXECUTOR_ARGS, "SPARK_EXECUTOR_MEMORY"] if not env.get(name)]
    if missing:
        raise PropensityError(
            f"`propensity executor` runs inside a Spark executor pod, which sets {', '.join(missing)}; "
            "start it through spark_master=k8s://..."
        )
    import pyspark

    spark_home = env.get("SPARK_HOME") or str(Path(pyspark.__file__).parent)
    classpath = ":".join(p for p in (env.get("SPARK_CLASSPATH"), f"{spark_home}/jars/*") if p)
    java = f"{env['JAVA_HOME']}/bin/java" if env.get("JAVA_HOME") else "java"
    options = [
        env[name]
        for name in sorted(
            (n for n in env if n.startswith("SPARK_JAVA_OPT_") and n.removeprefix("SPARK_JAVA_OPT_").isdigit()),
            key=lambda n: int(n.removeprefix("SPARK_JAVA_OPT_")),
        )
    ]
    memory = env["SPARK_EXECUTOR_MEMORY"]
    command = [java, *options, f"-Xms{memory}", f"-Xmx{memory}", "-cp", classpath]
    command.append("org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend")
    for name, flag in EXECUTOR_ARGS.items():
        command += [flag, env[name]]
    return command


def release_executors() -> None:
    """Stop this process's Spark session when it runs on a cluster, giving its executors back to
    other applications (a long-lived process between Spark jobs, such as the demo, would otherwise
    hold the cores a pipeline step is waiting for). A local session costs nothing to keep."""
    session = SparkSession.getActiveSession()
    if session is None or is_connect_session(session):
        return  # a Spark Connect client holds no executors
    if not (session.sparkContext.master or "local").startswith("local"):
        session.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m propensity.spark archive`: dump the class archive unless it exists (make setup)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["archive-workload"] and len(args) == 2:
        _archive_workload(Path(args[1]))
    elif args == ["archive"]:
        existing = class_archive()
        if existing is None or not existing.is_file():
            archive = build_class_archive()
            print(f"Spark class archive: {archive}" if archive else "no java found: no Spark class archive")
    else:
        print("usage: python -m propensity.spark archive", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PropensityError as error:
        sys.exit(f"error: {error}")  # one line, exit status 1
