"""Nightly batch scoring with Spark: historic partition per date, latest table switched atomically."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pandas as pd
from pyspark.sql import functions as sf

from components.features import scoring_inputs
from feature_repo.definitions import SCORE_VIEW
from feature_repo.store import feature_store
from propensity import features as F
from propensity.errors import PropensityError
from propensity.lake import atomic_path
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.tracking import CHAMPION, alias_version, configure

SCORE_COLUMNS = [F.ENTITY, "score", "model_version", "scored_at", "score_date"]
CURRENT_POINTER = "_CURRENT"


@dataclass(frozen=True)
class ScoringResult:
    score_date: str
    model_version: str
    eligible_customers: int
    rows_scored: int
    latest_rows: int


def current_latest_dir(table: Path) -> Path | None:
    pointer = table / CURRENT_POINTER
    if not pointer.exists():
        return None
    return table / pointer.read_text().strip()


def read_latest_scores(settings: Settings) -> pd.DataFrame:
    """The latest table as readers see it: whatever version the pointer names, never a mix."""
    current = current_latest_dir(settings.latest_scores_path)
    if current is None:
        raise PropensityError("no latest scores yet; run the batch-scoring pipeline first")
    return pd.read_parquet(current)


def switch_latest(table: Path, new_version: str, keep: int = 2) -> None:
    """Point readers at `new_version` with one atomic rename, then drop versions nobody can see."""
    with atomic_path(table / CURRENT_POINTER) as tmp:
        tmp.write_text(new_version)
    versions = sorted((p for p in table.glob("v-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in versions[:-keep]:
        if old.name != new_version:
            shutil.rmtree(old, ignore_errors=True)


def score_customers(settings: Settings, score_date: str | None = None) -> ScoringResult:
    """Score every known customer as of `score_date` with the champion; rerunning a date replaces it."""
    champion = alias_version(settings, settings.model_name, CHAMPION)
    if champion is None:
        raise PropensityError(f"model '{settings.model_name}' has no champion yet; run the training pipeline first")
    as_of, eligible = scoring_inputs(settings, score_date)
    if eligible.empty:
        raise PropensityError(f"no customer has purchase history before {as_of.date()}; nothing to score")
    date_key = str(as_of.date())

    configure(settings)
    spark = spark_session(settings, "propensity-batch-scoring")
    predict = mlflow.pyfunc.spark_udf(spark, champion.uri, result_type="array<double>", env_manager="local")
    scored = (
        spark.createDataFrame(eligible[[F.ENTITY, *F.BATCH_MODEL_FEATURES]])
        .repartition(4)
        .select(F.ENTITY, predict(*F.BATCH_MODEL_FEATURES).getItem(1).alias("score"))
        .withColumn("model_version", sf.lit(champion.version))
        .withColumn("scored_at", sf.lit(datetime.now(UTC).isoformat(timespec="seconds")))
        .withColumn("score_date", sf.lit(date_key))
    )
    historic = str(settings.historic_scores_path)
    # Dynamic partition overwrite: only this date's partition is replaced, so reruns never duplicate.
    scored.write.mode("overwrite").partitionBy("score_date").parquet(historic)

    partition = spark.read.parquet(historic).where(sf.col("score_date") == date_key)
    counts = partition.agg(sf.count("*").alias("rows"), sf.countDistinct(F.ENTITY).alias("customers")).first()
    assert counts is not None
    if not counts["rows"] == counts["customers"] == len(eligible):
        raise PropensityError(
            f"scores for {date_key} do not reconcile: {counts['rows']} rows, {counts['customers']} customers, "
            f"{len(eligible)} eligible; the latest table was left unchanged"
        )

    # Latest = the newest scoring date's partition: the current active base, one row per customer.
    # Taking the newest date (not this run's) keeps a backfill of an older date from going live;
    # customers who lapsed out of the active base drop out instead of keeping an old score.
    all_scores = spark.read.parquet(historic)
    newest = all_scores.agg(sf.max("score_date")).first()
    assert newest is not None
    latest = all_scores.where(sf.col("score_date") == newest[0]).select(*SCORE_COLUMNS)
    version = f"v-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    latest.coalesce(1).write.parquet(str(settings.latest_scores_path / version))
    latest_rows = spark.read.parquet(str(settings.latest_scores_path / version)).count()
    switch_latest(settings.latest_scores_path, version)
    return ScoringResult(date_key, champion.version, len(eligible), int(counts["rows"]), int(latest_rows))


def publish_latest_scores(settings: Settings) -> int:
    """Push the latest table to the online store, where the predictor looks scores up."""
    latest = read_latest_scores(settings)
    latest[F.EVENT_TIMESTAMP] = pd.to_datetime(latest["score_date"])
    rows = latest[[F.ENTITY, F.EVENT_TIMESTAMP, "score", "model_version", "scored_at"]]
    feature_store(settings).write_to_online_store(SCORE_VIEW, rows)
    return len(rows)
