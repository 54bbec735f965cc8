"""Nightly batch scoring with Spark, where the data lives.

Spark reads the score date's partition of the offline feature table, the champion's native model is
loaded once per Python worker and applied to Arrow batches (`mapInPandas`), and the scores are kept
on the executors' disks until they reconcile with the eligible population that Spark computes
independently from the lake. Only then is the date's partition of the historic table (Iceberg)
replaced, in one commit that records the model version; a failed check (or a crash before the
commit) leaves both the historic and the latest tables as they were. The latest table is replaced
whole in one commit; its push to the online store reads exactly that snapshot, in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from propensity import features as F
from propensity.catalog import table_name
from propensity.errors import PropensityError
from propensity.feature_table import feature_snapshot, scoring_features, snapshot_key
from propensity.lake import read_customers, read_transactions, resolve_date
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.storage import Storage
from propensity.tables import (
    HISTORIC_SCORES,
    LATEST_SCORES,
    SCORE_DATE,
    TableSnapshot,
    current_snapshot,
    newest_partition,
    overwrite_partitions,
    read_snapshot,
    replace_table,
    scan_batches,
)

if TYPE_CHECKING:  # MLflow is imported by the step that loads the model, not by publishing
    from propensity.tracking import ModelRef

# Every score row says what it was scored from: the model version and the feature table's snapshot
# (columns, so that they outlive the snapshots maintenance expires).
FEATURE_SNAPSHOT_ID = "feature_snapshot_id"
SCORE_COLUMNS = [F.ENTITY, "score", "model_version", FEATURE_SNAPSHOT_ID, "scored_at", SCORE_DATE]
LATEST_COLUMNS = [*SCORE_COLUMNS, F.EVENT_TIMESTAMP]


@dataclass(frozen=True)
class ScoringResult:
    score_date: str
    model_version: str
    eligible_customers: int
    rows_scored: int
    latest_rows: int


# The champion, loaded at most once per Python worker process (Spark reuses its workers).
_WORKER_MODELS: dict[str, Any] = {}


def _worker_model(tracking_uri: str, model_uri: str) -> Any:
    if model_uri not in _WORKER_MODELS:
        import mlflow

        from propensity.tracking import load_sklearn_uri

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        _WORKER_MODELS.clear()
        _WORKER_MODELS[model_uri] = load_sklearn_uri(model_uri)
    return _WORKER_MODELS[model_uri]


def score_batches(
    tracking_uri: str, model_uri: str, features: list[str]
) -> Callable[[Iterable[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The `mapInPandas` function: (customer_id, features...) batches to (customer_id, score)."""

    def score(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = _worker_model(tracking_uri, model_uri)
        for batch in batches:
            probabilities = model.predict_proba(batch[features])[:, 1]
            yield pd.DataFrame({F.ENTITY: batch[F.ENTITY], "score": probabilities.astype("float64")})

    return score


def apply_model(frame: DataFrame, settings: Settings, champion: ModelRef, partitions: int | None = None) -> DataFrame:
    scored = frame.repartition(partitions) if partitions else frame
    return scored.mapInPandas(
        score_batches(settings.tracking_uri, champion.uri, F.BATCH_MODEL_FEATURES),
        schema=f"{F.ENTITY} string, score double",
    )


def reconcile(staged: DataFrame, eligible: DataFrame) -> tuple[int, int]:
    """(rows scored, eligible customers); raises unless every eligible customer is scored exactly once.

    One Spark action: both sides counted per customer and joined, so the counts and an example of
    each mismatch come from one pass (a step's Spark actions each cost seconds of scheduling)."""
    scored = staged.groupBy(F.ENTITY).agg(sf.count(sf.lit(1)).alias("scored"))
    wanted = eligible.groupBy(F.ENTITY).agg(sf.count(sf.lit(1)).alias("eligible"))
    customer = sf.col(F.ENTITY)
    is_scored, is_eligible = sf.col("scored").isNotNull(), sf.col("eligible").isNotNull()
    counts = (
        scored.join(wanted, F.ENTITY, "full_outer")
        .agg(
            sf.coalesce(sf.sum("scored"), sf.lit(0)).alias("rows"),
            sf.count(sf.when(is_scored & customer.isNotNull(), 1)).alias("customers"),
            sf.coalesce(sf.sum("eligible"), sf.lit(0)).alias("eligible"),
            sf.min(sf.when(~is_scored, customer)).alias("missing"),
            sf.min(sf.when(~is_eligible & customer.isNotNull(), customer)).alias("extra"),
        )
        .first()
    )
    assert counts is not None
    rows, customers, eligible_count = int(counts["rows"]), int(counts["customers"]), int(counts["eligible"])
    missing, extra = counts["missing"], counts["extra"]
    if rows != customers or missing is not None or extra is not None or rows != eligible_count:
        detail = (
            f"{rows} rows, {customers} distinct customers, {eligible_count} eligible"
            + (f"; e.g. {missing!r} is not scored" if missing is not None else "")
            + (f"; e.g. {extra!r} is scored but not eligible" if extra is not None else "")
        )
        raise PropensityError(f"scores do not reconcile with the lake: {detail}; the tables were left unchanged")
    return rows, eligible_count


def score_customers(settings: Settings, score_date: str | None = None) -> ScoringResult:
    """Score every known customer as of `score_date` with the champion; rerunning a date replaces it."""
    from propensity.tracking import CHAMPION, alias_version

    champion = alias_version(settings, settings.model_name, CHAMPION)
    if champion is None:
        raise PropensityError(f"model '{settings.model_name}' has no champion yet; run the training pipeline first")
    as_of = resolve_date(settings, score_date)
    date_key = snapshot_key(as_of)
    features = feature_snapshot(settings, as_of)
    spark = spark_session(settings, "propensity-batch-scoring")
    scored = (
        apply_model(scoring_features(spark, settings, features), settings, champion, settings.scoring_partitions)
        .withColumn("model_version", sf.lit(champion.version))
        .withColumn(FEATURE_SNAPSHOT_ID, sf.lit(int(features.snapshot_id)).cast("long"))
        .withColumn("scored_at", sf.lit(datetime.now(UTC).isoformat(timespec="seconds")))
        .withColumn(SCORE_DATE, sf.lit(date_key))
        .select(*SCORE_COLUMNS)
    )
    # Scored once, kept on the executors' disks: reconciled first, then committed.
    scored = scored.persist(StorageLevel.DISK_ONLY)
    try:
        eligible = F.active_customers(read_customers(spark, settings), read_transactions(spark, settings), as_of)
        rows, eligible_count = reconcile(scored, eligible)
        lineage = {"model_version": champion.version, SCORE_DATE: date_key}
        overwrite_partitions(scored, settings, HISTORIC_SCORES, SCORE_DATE, lineage)
    finally:
        scored.unpersist()
    latest_rows = write_latest(spark, settings)
    return ScoringResult(date_key, champion.version, eligible_count, rows, latest_rows)


def write_latest(spark: SparkSession, settings: Settings) -> int:
    """Latest = the newest score date's partition (the current active base, one row per customer),
    replacing the whole table in one commit. Taking the newest date, not this run's, keeps a backfill
    of an older date from going live; customers who lapsed out of the active base drop out.

    A run that scored at the same time may have committed a newer date between our look at the
    newest date and our commit, and written its latest before ours: so after our commit we look
    again, and write again while the newest date moved. The last run to write latest looks last."""
    written = None
    for _ in range(LATEST_ATTEMPTS):
        newest = historic_snapshot(settings)
        if newest == written:
            return int(spark.table(table_name(settings, LATEST_SCORES)).count())
        snapshot_id, date = newest
        historic = read_snapshot(spark, settings, TableSnapshot(HISTORIC_SCORES, snapshot_id, {}, (SCORE_DATE, date)))
        # Online rows are stamped with the scoring time: a rescored date replaces what serving holds.
        latest = historic.withColumn(F.EVENT_TIMESTAMP, sf.to_timestamp("scored_at").cast("timestamp_ntz"))
        replace_table(latest.select(*LATEST_COLUMNS), settings, LATEST_SCORES, {SCORE_DATE: date})
        written = newest
    raise PropensityError(
        f"the historic scores table kept changing while the latest table was written ({LATEST_ATTEMPTS} times); "
        "rerun the scoring"
    )


LATEST_ATTEMPTS = 5


def historic_snapshot(settings: Settings) -> tuple[int, str]:
    """The historic table's current snapshot and the newest score date in it."""
    newest = newest_partition(settings, HISTORIC_SCORES, SCORE_DATE)
    if newest is None:
        raise PropensityError("no historic scores yet; run the batch-scoring pipeline first")
    return newest


def latest_scores(settings: Settings) -> TableSnapshot:
    """The snapshot of the latest table readers see now."""
    snapshot = current_snapshot(settings, LATEST_SCORES)
    if snapshot is None:
        raise PropensityError("no latest scores yet; run the batch-scoring pipeline first")
    return snapshot


def sample_latest_customers(settings: Settings, n: int, seed: int = 0) -> list[str]:
    """Up to `n` customer ids from the latest table, from its first batch only (no full read)."""
    snapshot = latest_scores(settings)
    batches = scan_batches(settings, LATEST_SCORES, max(n * 20, 10_000), [F.ENTITY], snapshot.snapshot_id)
    first = next(batches, None)
    if first is None:
        return []
    return first[F.ENTITY].sample(n=min(n, len(first)), random_state=seed).tolist()


def publish_latest_scores(settings: Settings) -> int:
    """Push the latest table to the online store, where the predictor looks scores up. Feast is
    imported here: the scoring step, in the same module, does not use it."""
    from components.features import push_snapshot_online
    from feature_repo.definitions import SCORE_VIEW

    Storage(settings).check()
    snapshot = latest_scores(settings)
    score_date = snapshot.properties[SCORE_DATE]
    return push_snapshot_online(settings, SCORE_VIEW, pd.Timestamp(score_date), str(snapshot.snapshot_id), snapshot)
