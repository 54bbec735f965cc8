"""The Spark session: `local[*]` by default, Spark on Kubernetes when `spark_master` says so."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from propensity.settings import Settings


def spark_session(settings: Settings, app_name: str) -> SparkSession:
    # Python workers must run the same interpreter (and packages) as the driver.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(settings.spark_master)
        .appName(app_name)
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(settings.home / "tmp" / "spark"))
        .getOrCreate()
    )
