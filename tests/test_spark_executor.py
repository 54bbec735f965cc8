"""The project image as a Spark executor: Spark on Kubernetes starts executor pods with the argument
`executor` and the driver's coordinates in the environment; `propensity executor` turns those into
the executor backend's JVM command, as Spark's own image entrypoint does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from propensity.cli import main
from propensity.spark import executor_command
from tests.services import SparkCluster, free_port

POD_ENV = {
    "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@10.0.0.5:7078",
    "SPARK_EXECUTOR_ID": "3",
    "SPARK_EXECUTOR_CORES": "2",
    "SPARK_APPLICATION_ID": "spark-abc",
    "SPARK_EXECUTOR_POD_IP": "10.0.0.9",
    "SPARK_RESOURCE_PROFILE_ID": "0",
    "SPARK_EXECUTOR_POD_NAME": "propensity-exec-3",
    "SPARK_EXECUTOR_MEMORY": "2g",
    "SPARK_JAVA_OPT_10": "-Dspark.b=2",
    "SPARK_JAVA_OPT_2": "-Dspark.a=1",
    "JAVA_HOME": "/usr/lib/jvm/java-17",
}


def test_the_executor_command_follows_the_pod_environment() -> None:
    command = executor_command(POD_ENV)
    assert command[:5] == ["/usr/lib/jvm/java-17/bin/java", "-Dspark.a=1", "-Dspark.b=2", "-Xms2g", "-Xmx2g"]
    assert command[5] == "-cp" and command[6].endswith("/pyspark/jars/*")
    backend = command.index("org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend")
    flags = dict(zip(command[backend + 1 :: 2], command[backend + 2 :: 2], strict=True))
    assert flags == {
        "--driver-url": "spark://CoarseGrainedScheduler@10.0.0.5:7078",
        "--executor-id": "3",
        "--cores": "2",
        "--app-id": "spark-abc",
        "--hostname": "10.0.0.9",
        "--resourceProfileId": "0",
        "--podName": "propensity-exec-3",
    }


def test_outside_an_executor_pod_it_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in POD_ENV:
        monkeypatch.delenv(name, raising=False)
    assert main(["executor"]) == 2
    assert "SPARK_DRIVER_URL" in capsys.readouterr().err


DRIVER = """
import json, os, subprocess, sys, time
from pyspark.sql import SparkSession

master, port = sys.argv[1], sys.argv[2]
spark = (
    SparkSession.builder.master(master).appName("executor-entrypoint")
    .config("spark.driver.host", "127.0.0.1").config("spark.driver.port", port)
    .config("spark.executor.memory", "512m").config("spark.ui.enabled", "false")
    .config("spark.ui.showConsoleProgress", "false").getOrCreate()
)
sc = spark.sparkContext
pod = {
    "SPARK_DRIVER_URL": f"spark://CoarseGrainedScheduler@127.0.0.1:{port}",
    "SPARK_EXECUTOR_ID": "7", "SPARK_EXECUTOR_CORES": "1", "SPARK_APPLICATION_ID": sc.applicationId,
    "SPARK_EXECUTOR_POD_IP": "127.0.0.1", "SPARK_RESOURCE_PROFILE_ID": "0",
    "SPARK_EXECUTOR_POD_NAME": "propensity-exec-7", "SPARK_EXECUTOR_MEMORY": "512m",
    "SPARK_JAVA_OPT_0": f"-Dspark.driver.port={port}", "EXECUTOR_MARKER": "project-image",
}
executor = subprocess.Popen([sys.executable, "-m", "propensity.cli", "executor"], env={**os.environ, **pod})
deadline = time.monotonic() + 120
while "7" not in sc._jsc.sc().getExecutorIds().mkString(",").split(","):
    if time.monotonic() > deadline or executor.poll() is not None:
        raise SystemExit(f"the executor never registered (exit code {executor.poll()})")
    time.sleep(0.5)
tasks = sc.parallelize(range(40), 40).map(lambda _: (time.sleep(0.2), os.environ.get("EXECUTOR_MARKER", ""))[1])
markers = sorted(set(tasks.collect()))
spark.stop()
executor.wait(timeout=60)
print(json.dumps({"markers": markers}))
"""


@pytest.mark.system
def test_a_real_driver_runs_tasks_on_an_executor_started_by_the_entrypoint(spark_cluster: SparkCluster) -> None:
    """A driver on a standalone cluster accepts the executor `propensity executor` starts from a
    pod's environment, and its Python workers run tasks (they see the pod's environment)."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, spark_cluster.master, str(free_port())],
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "project-image" in result["markers"]
