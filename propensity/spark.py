"""The Spark session: `local[*]` by default, Spark on Kubernetes when `spark_master` says so."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from propensity.settings import Settings

LOG_CONFIG = Path(__file__).with_name("log4j2.properties")


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    # Python workers must run the same interpreter (and packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(settings.spark_master)
        .appName(app_name)
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.session.timeZone", "UTC")
        # The lake's timestamps are UTC wall-clock times without a zone, as pandas and Feast read them.
        .config("spark.sql.timestampType", "TIMESTAMP_NTZ")
        # pandas writes nanosecond timestamps, which Spark reads only as integers (see lake.read_file).
        .config("spark.sql.legacy.parquet.nanosAsLong", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(settings.home / "tmp" / "spark"))
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark
