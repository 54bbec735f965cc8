"""The Spark session: `local[*]` by default, a standalone or Kubernetes cluster when `spark_master` says so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

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
        "spark.local.dir": str(settings.home / "tmp" / "spark"),
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
