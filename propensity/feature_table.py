"""The offline feature table: snapshot features by date, an Iceberg table written by Spark.

Partitioned by `snapshot_date`. Every commit records, in its snapshot summary, which dates it
computed, when their computation began and with which feature definition: the table's own metadata
says what is in it, no manifest beside it. `build_feature_table` computes only the snapshots that
are missing or whose input days changed in the lake since (incremental); a recomputed snapshot
replaces its date whole, in one commit with the others computed with it. When the definition
changes (a new feature), every snapshot in the table is recomputed in one commit, so that the table
never mixes two schemas.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from propensity import features as F
from propensity.catalog import table_name
from propensity.errors import PropensityError
from propensity.lake import first_data_date, lake_changes, read_customers, read_transactions
from propensity.settings import Settings
from propensity.tables import (
    TableSnapshot,
    current_snapshot,
    overwrite_where,
    partition_updates,
    read_snapshot,
    snapshot_history,
    timestamp,
)

FEATURE_SNAPSHOTS = "feature_snapshots"
SNAPSHOT_PARTITION = "snapshot_date"
# What each commit of the table records in its snapshot summary.
COMPUTED_DATES = "snapshot-dates"  # the dates it computed, comma-separated (an empty one has no rows)
COMPUTED_FROM = "computed-from"  # when their computation began (UTC ISO): later lake changes make them stale
FORGOTTEN_DATES = "forgotten-dates"  # the stale dates it deleted before maintenance expired their lineage
DEFINITION = "feature-definition"  # propensity.features.FEATURE_DEFINITION


def snapshot_key(date: pd.Timestamp) -> str:
    return str(pd.Timestamp(date).date())


def feature_dates(settings: Settings, as_of: pd.Timestamp) -> list[pd.Timestamp]:
    """The training snapshots of the window (those after the lake's first day) and `as_of` itself."""
    first = first_data_date(settings)
    dates = F.training_snapshot_dates(
        as_of, settings.training_window_days, settings.label_horizon_days, settings.snapshot_every_days
    )
    return sorted({d for d in dates if d > first} | {as_of})


def computed_snapshots(settings: Settings) -> dict[str, str]:
    """When the computation of each snapshot in the table began (UTC ISO), by snapshot date, from
    the table's commits. A date whose commit maintenance has expired counts as computed before
    anything the tables still know changed ("", see `forget_stale_snapshots`); an empty snapshot
    whose commit is gone is forgotten (and computed again when asked for)."""
    computed: dict[str, str] = {}
    for commit in snapshot_history(settings, FEATURE_SNAPSHOTS):
        if COMPUTED_DATES in commit.properties:
            dates = [d for d in commit.properties[COMPUTED_DATES].split(",") if d]
            computed.update(dict.fromkeys(dates, commit.properties[COMPUTED_FROM]))
        for date in commit.properties.get(FORGOTTEN_DATES, "").split(","):
            computed.pop(date, None)
    for date, (_, committed_at) in partition_updates(settings, FEATURE_SNAPSHOTS, SNAPSHOT_PARTITION).items():
        computed.setdefault(date, committed_at)
    return dict(sorted(computed.items()))


def table_definition(settings: Settings) -> str | None:
    """The feature definition the table's snapshots were computed with (None: an empty table)."""
    snapshot = current_snapshot(settings, FEATURE_SNAPSHOTS)
    return snapshot.properties.get(DEFINITION) if snapshot is not None else None


def stale_snapshots(settings: Settings, dates: list[pd.Timestamp] | None = None) -> list[pd.Timestamp]:
    """The dates whose snapshot is missing, or was computed before a day it depends on changed; with
    a new feature definition, every snapshot in the table as well. No `dates`: every snapshot in
    the table."""
    computed = computed_snapshots(settings)
    if dates is None:
        dates = [pd.Timestamp(key) for key in computed]
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
    """Compute the stale snapshots among `dates` into the offline table, in one commit; return the
    keys computed."""
    return compute_snapshots(spark, settings, stale_snapshots(settings, dates))


def compute_snapshots(spark: SparkSession, settings: Settings, stale: list[pd.Timestamp]) -> list[str]:
    """Compute these snapshots (found stale by `stale_snapshots`) into the offline table, in one
    commit; return their keys."""
    if not stale:
        return []
    started = timestamp(datetime.now(UTC))  # changes after this moment make these snapshots stale again
    keys = [snapshot_key(d) for d in stale]
    frame = F.snapshot_features(read_customers(spark, settings), read_transactions(spark, settings), stale)
    rows = frame.withColumn(SNAPSHOT_PARTITION, sf.date_format(F.EVENT_TIMESTAMP, "yyyy-MM-dd"))
    properties = {COMPUTED_DATES: ",".join(keys), COMPUTED_FROM: started, DEFINITION: F.FEATURE_DEFINITION}
    # A date without a single customer is still computed: its old rows, if any, are removed.
    overwrite_where(rows, settings, FEATURE_SNAPSHOTS, SNAPSHOT_PARTITION, keys, properties)
    return keys


def forget_stale_snapshots(spark: SparkSession, settings: Settings) -> list[str]:
    """Delete, in one commit, every snapshot in the table that is stale now; return their keys.

    Run by maintenance before it expires old commits: once a commit is expired, when it changed a
    lake day or computed a snapshot is no longer known (`partition_updates`), and an unknown change
    counts as older than every snapshot. That is true only if nothing stale is left when the
    commits expire: what is deleted here is computed again when next asked for."""
    stale = [snapshot_key(d) for d in stale_snapshots(settings)]
    current = current_snapshot(settings, FEATURE_SNAPSHOTS)
    if not stale or current is None:
        return []
    nothing = spark.table(table_name(settings, FEATURE_SNAPSHOTS)).limit(0)
    properties = {FORGOTTEN_DATES: ",".join(stale), DEFINITION: current.properties.get(DEFINITION, "")}
    overwrite_where(nothing, settings, FEATURE_SNAPSHOTS, SNAPSHOT_PARTITION, stale, properties)
    return stale


def feature_snapshot(settings: Settings, date: pd.Timestamp) -> TableSnapshot:
    """One date's snapshot of features, pinned to the table's current snapshot."""
    key = snapshot_key(date)
    current = current_snapshot(settings, FEATURE_SNAPSHOTS)
    if current is None or key not in computed_snapshots(settings):
        raise PropensityError(f"no feature snapshot for {key}; run the materialize step for that date first")
    return TableSnapshot(FEATURE_SNAPSHOTS, current.snapshot_id, current.properties, (SNAPSHOT_PARTITION, key))


def scoring_features(spark: SparkSession, settings: Settings, snapshot: TableSnapshot) -> DataFrame:
    """The batch model's inputs for the known customers as of a date: the date's feature snapshot
    (`feature_snapshot`) with each customer's profile from the lake."""
    profiles = read_customers(spark, settings).select(F.ENTITY, *F.PROFILE_FEATURES)
    return (
        read_snapshot(spark, settings, snapshot)
        .where(sf.col("days_since_last_order") <= F.ACTIVE_WINDOW_DAYS)
        .join(profiles, F.ENTITY, "left")
        .fillna(F.UNKNOWN, subset=F.PROFILE_FEATURES)
        .select(F.ENTITY, *F.BATCH_MODEL_FEATURES)
    )
