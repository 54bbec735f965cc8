"""The offline feature table (Spark), its Feast views, online pushes and point-in-time training sets.

* `build_feature_table`: snapshot features for the requested dates, computed by Spark from the lake
  in one job and written to the offline table partitioned by `snapshot_date`. Incremental: only
  snapshots that are missing, or whose input days changed since they were computed, are computed.
* `materialize_features`: the table for a training window or a scoring date, the Feast repo applied
  over it, and the newest snapshot (and changed profiles) pushed to the online store in batches.
  An older snapshot than the one online never replaces it (a backfill cannot roll serving back).
* `build_training_set`: labelled entity rows computed by Spark, capped by a setting (rows kept by
  a hash of each: every snapshot date keeps its share, a rebuild keeps the same rows), joined
  point-in-time by Feast `get_historical_features`, written unfilled (validation looks at the
  data as it is) with its lineage (propensity.training_set).

The training window and label horizon are settings; a pipeline's parameters reach these steps as
`settings.with_values(...)`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
from feast import FeatureStore
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from feature_repo.definitions import ACTIVITY_VIEW, PROFILE_VIEW, TRAINING_SERVICE, FeatureRepo
from feature_repo.store import check_redis, feature_repo, feature_store, pinned_feature_store
from propensity import features as F
from propensity.errors import PropensityError
from propensity.feature_table import (
    FEATURE_SNAPSHOTS,
    compute_snapshots,
    computed_snapshots,
    feature_dates,
    feature_snapshot,
    snapshot_key,
    stale_snapshots,
)
from propensity.lake import CUSTOMERS, TRANSACTIONS, first_data_date, resolve_date
from propensity.settings import Settings
from propensity.spark import default_parallelism, is_connect_session, spark_session
from propensity.storage import Storage
from propensity.tables import TableSnapshot, current_snapshot, load_table, read_snapshot, scan_batches
from propensity.training_set import TrainingSetInfo, write_training_set

# ---------------------------------------------------------------------------------------------------
# Online store


def push_online(settings: Settings, view: str, source: TableSnapshot, columns: list[str] | None = None) -> int:
    """Write one snapshot of a table (or one partition of it) to a view of the online store through
    Feast, in batches; returns rows.

    SQLite is one file with one writer: the driver streams the table's batches into it. Any other
    store (Redis) takes concurrent writers, so each Spark partition writes its own rows from the
    Python worker that reads it, and the push grows with the executors instead of the driver."""
    if settings.online_store == "sqlite":
        store = feature_store(settings)
        rows = 0
        for batch in _batches(settings, source, columns):
            store.write_to_online_store(view, batch)
            rows += len(batch)
        return rows
    spark = spark_session(settings, "propensity-online-push")
    frame = read_snapshot(spark, settings, source)
    writers = settings.online_push_partitions or default_parallelism(spark)
    if is_connect_session(spark) or frame.rdd.getNumPartitions() < writers:
        frame = frame.repartition(writers)  # a Connect client cannot see the partitions: always
    written = frame.select(*(columns or frame.columns)).mapInPandas(write_partitions(settings, view), "rows long")
    total = written.agg(sf.sum("rows")).first()
    return int(total[0] or 0) if total is not None else 0


def _batches(settings: Settings, source: TableSnapshot, columns: list[str] | None) -> Iterator[pd.DataFrame]:
    rows = settings.online_push_batch_rows
    return scan_batches(settings, source.name, rows, columns, source.snapshot_id, source.partition)


def write_partitions(settings: Settings, view: str) -> Callable[[Iterable[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The `mapInPandas` function of a parallel push: write each Arrow batch, yield the row counts."""

    def write(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        store = feature_store(settings)
        size = settings.online_push_batch_rows
        for batch in batches:
            for start in range(0, len(batch), size):
                store.write_to_online_store(view, batch.iloc[start : start + size])
            yield pd.DataFrame({"rows": [len(batch)]})

    return write


def push_snapshot_online(
    settings: Settings,
    view: str,
    date: pd.Timestamp,
    version: str,
    source: TableSnapshot,
    columns: list[str] | None = None,
) -> int:
    """Push a whole snapshot of a view unless the online store already holds a newer one (or this
    very version); returns the rows pushed. `version` tells recomputed snapshots of a date apart."""
    records = Storage(settings)
    pushes = records.read_json(settings.online_pushes_key, {})
    online = pushes.get(view, {})
    key = snapshot_key(date)
    if online.get("snapshot", "") > key or (online.get("snapshot") == key and online.get("version") == version):
        return 0
    rows = push_online(settings, view, source, columns)
    pushes[view] = {"snapshot": key, "version": version, "pushed_at": datetime.now(UTC).isoformat()}
    records.write_json(settings.online_pushes_key, pushes)
    return rows


def push_profiles_online(settings: Settings) -> int:
    """Push the customers table's profiles when the table changed since the last push."""
    snapshot = current_snapshot(settings, CUSTOMERS)
    records = Storage(settings)
    pushes = records.read_json(settings.online_pushes_key, {})
    if snapshot is None or pushes.get(PROFILE_VIEW, {}).get("version") == str(snapshot.snapshot_id):
        return 0
    columns = [F.ENTITY, "signup_date", *F.PROFILE_FEATURES]
    rows = push_online(settings, PROFILE_VIEW, snapshot, columns)
    pushes[PROFILE_VIEW] = {"version": str(snapshot.snapshot_id), "pushed_at": datetime.now(UTC).isoformat()}
    records.write_json(settings.online_pushes_key, pushes)
    return rows


# ---------------------------------------------------------------------------------------------------
# The materialize step


@dataclass(frozen=True)
class MaterializeResult:
    as_of_date: str
    snapshot_dates: int
    snapshots_computed: int
    online_rows: int
    seconds: float


def materialize_features(settings: Settings, as_of_date: str | None = None) -> MaterializeResult:
    """Bring the offline table up to date for the training window, apply the Feast repo, push the
    newest snapshot and changed profiles online."""
    started = time.monotonic()
    as_of = resolve_date(settings, as_of_date)
    dates = feature_dates(settings, as_of)
    Storage(settings).check()  # before anything is computed or written
    if settings.online_store == "redis":
        check_redis(settings)
    # Spark starts only for snapshots to compute (the table's metadata says which): the monitoring
    # pipeline's materialization after the same night's scoring finds none and starts no Spark.
    stale = stale_snapshots(settings, dates)
    computed = compute_snapshots(spark_session(settings, "propensity-features"), settings, stale) if stale else []
    feature_store(settings).apply(feature_repo(settings).objects)  # type: ignore[arg-type]
    online_rows = push_snapshot_online(
        settings,
        ACTIVITY_VIEW,
        as_of,
        computed_snapshots(settings)[snapshot_key(as_of)],
        feature_snapshot(settings, as_of),
        [F.ENTITY, F.EVENT_TIMESTAMP, *F.SNAPSHOT_FEATURES],
    )
    online_rows += push_profiles_online(settings)
    return MaterializeResult(
        as_of_date=snapshot_key(as_of),
        snapshot_dates=len(dates),
        snapshots_computed=len(computed),
        online_rows=online_rows,
        seconds=round(time.monotonic() - started, 1),
    )


# ---------------------------------------------------------------------------------------------------
# Training sets


def historical_features(store: FeatureStore, entity_rows: DataFrame) -> pd.DataFrame:
    """Point-in-time join of the training feature service onto (customer_id, event_timestamp) rows.

    The rows go to Feast's Spark offline store as the Spark frame they are (it takes one, though its
    signature says pandas): collected into pandas, Feast would send them back to Spark as a local
    relation, which the optimizer copies row by row in the driver's heap (out of memory at 500,000
    rows in a 1 GB driver). Nothing is filled: a feature the join did not find stays null for
    validation to see."""
    service = store.get_feature_service(TRAINING_SERVICE)
    frame = store.get_historical_features(entity_df=cast(Any, entity_rows), features=service).to_df()
    frame[F.EVENT_TIMESTAMP] = pd.to_datetime(frame[F.EVENT_TIMESTAMP], utc=True).dt.tz_convert(None)
    return frame.sort_values([F.EVENT_TIMESTAMP, F.ENTITY]).reset_index(drop=True)


def feature_view_versions(repo: FeatureRepo) -> dict[str, str]:
    """A version for each feature view the training service reads: a hash of its definition (name,
    entities, features and types, TTL), not of where its rows live, so it changes exactly when the
    definition does."""
    versions = {}
    for view in (repo.activity, repo.profile):
        spec = view.to_proto().spec
        for location in ("batch_source", "stream_source", "project"):
            spec.ClearField(location)
        versions[view.name] = hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()[:12]
    return versions


def labelled_entities(
    spark: SparkSession, settings: Settings, dates: list[pd.Timestamp], snapshots: dict[str, int]
) -> DataFrame:
    """(customer, t, label) for every customer signed up before each t, computed by Spark from the
    customers and transactions tables as of the given snapshots."""
    customers, transactions = (
        read_snapshot(spark, settings, TableSnapshot(name, snapshots[name], {})) for name in (CUSTOMERS, TRANSACTIONS)
    )
    entities = F.snapshot_population(customers, dates).select(F.ENTITY, F.EVENT_TIMESTAMP)
    return F.snapshot_labels(entities, transactions, settings.label_horizon_days)


def cap_rows(frame: DataFrame, max_rows: int, seed: int = 0) -> tuple[DataFrame, int]:
    """At most about `max_rows` rows, each snapshot date keeping its share; returns the frame and the
    row count before capping. A row is kept by a hash of its (customer, t) and `seed`, never by a
    random draw: the same rows come back however Spark partitions or orders them, so a training set
    rebuilt from its recorded snapshots is the same set (Spark's `sampleBy` draws per partition, in
    the order a shuffle happened to deliver the rows)."""
    total = frame.count()
    if total <= max_rows:
        return frame, total
    buckets = 1_000_000
    keep = max_rows * buckets // total
    bucket = sf.pmod(sf.xxhash64(F.ENTITY, F.EVENT_TIMESTAMP, sf.lit(seed)), sf.lit(buckets))
    return frame.where(bucket < keep), total


# The tables a training set reads: their snapshots are its lineage, and enough to build it again.
TRAINING_TABLES = (TRANSACTIONS, CUSTOMERS, FEATURE_SNAPSHOTS)


def current_snapshots(settings: Settings) -> dict[str, int]:
    """The snapshot of each table a training set reads that readers see now."""
    found = {}
    for name in TRAINING_TABLES:
        snapshot = current_snapshot(settings, name)
        if snapshot is None:
            raise PropensityError(f"no {name} table yet; ingest data and run the materialize step first")
        found[name] = snapshot.snapshot_id
    return found


def build_training_set(settings: Settings, out_path: Path, as_of_date: str | None = None) -> TrainingSetInfo:
    """Labelled rows (customer, t) with features as known at t, for every t whose label is complete,
    written with their lineage: every table is read as of one snapshot, recorded in the lineage."""
    as_of = resolve_date(settings, as_of_date)
    dates = [d for d in feature_dates(settings, as_of) if d < as_of]
    if not dates:
        raise ValueError(
            f"the data starts {first_data_date(settings).date()}: not enough history before {as_of.date()} for "
            f"{settings.label_horizon_days}-day labels; pass a later as_of_date"
        )
    # Pinned before the check: the check then speaks for exactly what is read.
    snapshots = current_snapshots(settings)
    # Never a training set from a table a materialisation left half done (killed between two
    # snapshots, or with a new feature definition) or that the lake has changed under since.
    stale = stale_snapshots(settings, dates)
    if stale:
        raise PropensityError(
            f"the offline feature table is not up to date for {len(stale)} snapshot dates (first "
            f"{snapshot_key(stale[0])}): run the materialize step for {snapshot_key(as_of)} first"
        )
    return _write_training_set(settings, out_path, as_of, dates, snapshots)


def rebuild_training_set(settings: Settings, info: TrainingSetInfo, out_path: Path) -> TrainingSetInfo:
    """The training set `info` describes, built again from the table snapshots it recorded (time
    travel: whatever was ingested or recomputed since), with its window, horizon, spacing and cap.
    The snapshots must still be kept (`table_retention_days`)."""
    missing = sorted(set(TRAINING_TABLES) - set(info.table_snapshots))
    if missing:
        raise PropensityError(
            f"the training set's lineage records no snapshot of {', '.join(missing)}; cannot rebuild it"
        )
    for name, snapshot_id in info.table_snapshots.items():
        table = load_table(settings, name)
        if table is None or table.snapshot_by_id(snapshot_id) is None:
            raise PropensityError(
                f"snapshot {snapshot_id} of the table {name} is no longer kept (expired after "
                f"{settings.table_retention_days} days); the training set of {info.as_of_date} cannot be rebuilt"
            )
    settings = settings.with_values(
        training_window_days=info.training_window_days,
        label_horizon_days=info.label_horizon_days,
        snapshot_every_days=info.snapshot_every_days,
        **({"training_max_rows": info.max_rows} if info.max_rows else {}),
    )
    as_of = pd.Timestamp(info.as_of_date)
    every = F.training_snapshot_dates(
        as_of, info.training_window_days, info.label_horizon_days, info.snapshot_every_days
    )
    dates = [d for d in every if pd.Timestamp(info.first_snapshot) <= d < as_of]
    return _write_training_set(settings, out_path, as_of, dates, dict(info.table_snapshots))


def _write_training_set(
    settings: Settings, out_path: Path, as_of: pd.Timestamp, dates: list[pd.Timestamp], snapshots: dict[str, int]
) -> TrainingSetInfo:
    spark = spark_session(settings, "propensity-training-set")
    labelled = labelled_entities(spark, settings, dates, snapshots)
    entities, rows_before_cap = cap_rows(labelled, settings.training_max_rows)
    entities = entities.persist()  # Feast reads the rows twice: their time range, then the join
    try:
        with pinned_feature_store(settings, snapshots) as (store, repo):
            frame = historical_features(store, entities)
    finally:
        entities.unpersist()
    info = TrainingSetInfo(
        as_of_date=snapshot_key(as_of),
        training_window_days=settings.training_window_days,
        label_horizon_days=settings.label_horizon_days,
        snapshot_every_days=settings.snapshot_every_days,
        first_snapshot=snapshot_key(min(dates)),
        last_snapshot=snapshot_key(max(dates)),
        snapshots=len(dates),
        rows=len(frame),
        rows_before_cap=rows_before_cap,
        positives=int(frame[F.LABEL].sum()),
        feature_service=TRAINING_SERVICE,
        feature_views=feature_view_versions(repo),
        table_snapshots=snapshots,
        max_rows=settings.training_max_rows,
    )
    write_training_set(frame, out_path, info)
    return info
