"""The offline feature table: snapshot features by date, written by Spark, read where they live.

Parquet partitioned by `snapshot_date` under `settings.offline_features_path`, with a manifest of
when each snapshot was computed and with which feature definition. `build_feature_table` computes
only the snapshots that are missing or whose input days changed in the lake since (incremental); a
recomputed snapshot replaces its partition whole. When the definition changes (a new feature), every
snapshot in the table is recomputed, so that the table never mixes two schemas.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from propensity import features as F
from propensity.errors import PropensityError
from propensity.lake import lake_changes, read_customers, read_transactions
from propensity.settings import Settings
from propensity.tables import partition_name, read_manifest, replace_partitions, staging_dir, write_manifest

SNAPSHOT_PARTITION = "snapshot_date"
SNAPSHOTS_MANIFEST = "_snapshots.json"
DEFINITION_MANIFEST = "_definition.json"


def snapshot_key(date: pd.Timestamp) -> str:
    return str(pd.Timestamp(date).date())


def computed_snapshots(settings: Settings) -> dict[str, str]:
    """When each snapshot in the table was computed (UTC ISO), by snapshot date."""
    return dict(read_manifest(settings.offline_features_path / SNAPSHOTS_MANIFEST))


def table_definition(settings: Settings) -> str | None:
    """The feature definition the table's snapshots were computed with (None: an empty table)."""
    return read_manifest(settings.offline_features_path / DEFINITION_MANIFEST).get("features")


def stale_snapshots(settings: Settings, dates: list[pd.Timestamp]) -> list[pd.Timestamp]:
    """The dates whose snapshot is missing, or was computed before a day it depends on changed; with
    a new feature definition, every snapshot in the table as well."""
    computed = computed_snapshots(settings)
    if computed and table_definition(settings) != F.FEATURE_DEFINITION:
        return sorted(set(dates) | {pd.Timestamp(key) for key in computed})
    changes = sorted(lake_changes(settings).items())
    stale = []
    for date in sorted(set(dates)):
        key = snapshot_key(date)
        if key not in computed:
            stale.append(date)
            continue
        # A snapshot at t reads days before t only.
        latest_input_change = max((when for day, when in changes if day < key), default="")
        if latest_input_change > computed[key]:
            stale.append(date)
    return stale


def build_feature_table(spark: SparkSession, settings: Settings, dates: list[pd.Timestamp]) -> list[str]:
    """Compute the stale snapshots among `dates` into the offline table; return the keys computed."""
    stale = stale_snapshots(settings, dates)
    if not stale:
        return []
    started = datetime.now(UTC).isoformat()  # changes after this moment make these snapshots stale again
    table = settings.offline_features_path
    frame = F.snapshot_features(read_customers(spark, settings), read_transactions(spark, settings), stale)
    staged = staging_dir(table)
    (
        frame.withColumn(SNAPSHOT_PARTITION, sf.date_format(F.EVENT_TIMESTAMP, "yyyy-MM-dd"))
        .repartition(SNAPSHOT_PARTITION)
        .write.partitionBy(SNAPSHOT_PARTITION)
        .parquet(str(staged))
    )
    written = set(replace_partitions(staged, table, SNAPSHOT_PARTITION))
    keys = [snapshot_key(d) for d in stale]
    manifest = computed_snapshots(settings)
    # A snapshot without a single customer writes no partition; it is still computed (and empty).
    manifest.update(dict.fromkeys(keys, started))
    write_manifest(table / DEFINITION_MANIFEST, {"features": F.FEATURE_DEFINITION})
    write_manifest(table / SNAPSHOTS_MANIFEST, manifest)
    assert written <= set(keys)
    return keys


def snapshot_partition(settings: Settings, date: pd.Timestamp) -> Path:
    return settings.offline_features_path / partition_name(SNAPSHOT_PARTITION, snapshot_key(date))


def read_snapshot(spark: SparkSession, settings: Settings, date: pd.Timestamp) -> DataFrame:
    """One snapshot of the offline feature table, read straight from its partition."""
    return spark.read.parquet(str(snapshot_partition(settings, date)))


def scoring_features(spark: SparkSession, settings: Settings, as_of: pd.Timestamp) -> DataFrame:
    """The batch model's inputs for the known customers as of a date: the date's feature snapshot,
    read from its partition, with each customer's profile from the lake."""
    if not snapshot_partition(settings, as_of).is_dir():
        raise PropensityError(
            f"no feature snapshot for {snapshot_key(as_of)}; run the materialize step for that date first"
        )
    profiles = read_customers(spark, settings).select(F.ENTITY, *F.PROFILE_FEATURES)
    return (
        read_snapshot(spark, settings, as_of)
        .where(sf.col("days_since_last_order") <= F.ACTIVE_WINDOW_DAYS)
        .join(profiles, F.ENTITY, "left")
        .fillna(F.UNKNOWN, subset=F.PROFILE_FEATURES)
        .select(F.ENTITY, *F.BATCH_MODEL_FEATURES)
    )
