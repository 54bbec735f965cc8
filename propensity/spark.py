"""The Spark session: `local[*]` by default, a standalone or Kubernetes cluster when `spark_master` says so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from propensity.errors import PropensityError
from propensity.settings import Settings

LOG_CONFIG = Path(__file__).with_name("log4j2.properties")


def spark_conf(settings: Settings) -> dict[str, str]:
    """The session's configuration: the same tables and types however Spark runs."""
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
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}",
        # Credentials reach executors as settings: keep them out of Spark's UI and event logs.
        "spark.redaction.regex": "(?i)secret|password|token|access[.]key|cookies|feast_registry",
    }
    if not settings.spark_master.startswith("local"):
        # Executors are other processes (other machines): they run the project's interpreter (the
        # same image on Kubernetes), reach the driver at its advertised address, and see every
        # setting of the driver's process, so their Python code (the scoring and push workers) is
        # configured like the driver.
        conf["spark.executorEnv.PYSPARK_PYTHON"] = sys.executable
        conf["spark.executor.memory"] = settings.spark_executor_memory
        conf.update({f"spark.executorEnv.{key}": value for key, value in settings.as_env().items()})
        if settings.spark_driver_host:
            conf["spark.driver.host"] = settings.spark_driver_host
    if settings.spark_master.startswith("k8s://"):
        conf.update(kubernetes_conf(settings))
    return conf


POD_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def kubernetes_conf(settings: Settings) -> dict[str, str]:
    """Spark on Kubernetes in client mode: the driver is the pipeline step's process in its pod, the
    executors are pods of the project image that reach the driver at the pod's IP (the pipeline sets
    PROPENSITY_SPARK_DRIVER_HOST from the downward API: one address per pod, so concurrent runs
    never share a Service), on fixed ports a NetworkPolicy can allow."""
    if not settings.spark_driver_host:
        raise PropensityError("Spark on Kubernetes needs PROPENSITY_SPARK_DRIVER_HOST (the driver pod's IP)")
    namespace = settings.spark_namespace
    if namespace is None and (POD_ACCOUNT / "namespace").is_file():
        namespace = (POD_ACCOUNT / "namespace").read_text().strip()
    if not namespace:
        raise PropensityError("Spark on Kubernetes needs PROPENSITY_SPARK_NAMESPACE outside a pod")
    conf = {
        "spark.kubernetes.container.image": settings.spark_executor_image or settings.image,
        "spark.kubernetes.namespace": namespace,
        "spark.executor.instances": str(settings.spark_executor_instances),
        "spark.driver.bindAddress": "0.0.0.0",
        "spark.driver.port": "7078",
        "spark.blockManager.port": "7079",
        "spark.kubernetes.executor.deleteOnTermination": "true",
    }
    # Executors are owned by the step's pod (its name is the hostname) and go away with it.
    if os.environ.get("HOSTNAME"):
        conf["spark.kubernetes.driver.pod.name"] = os.environ["HOSTNAME"]
    if (POD_ACCOUNT / "token").is_file():
        conf["spark.kubernetes.authenticate.oauthTokenFile"] = str(POD_ACCOUNT / "token")
        conf["spark.kubernetes.authenticate.caCertFile"] = str(POD_ACCOUNT / "ca.crt")
    return conf


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    # Python workers must run the same interpreter (and packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.master(settings.spark_master).appName(app_name)
    for key, value in spark_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


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
