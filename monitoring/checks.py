"""The monitoring checks, each its own pipeline step: what they compare, and their recorded outcomes.

* inference drift: the online inference log of the `inference_window_days` before the date (the
  records the log stamped in that window) against the champion's reference; a bounded uniform sample
  of the window. The window follows the date, never the wall clock: a back-dated run judges the
  traffic of its own date, and a rerun for a date sees the same records;
* scoring drift: the nightly scoring population's features as of a date (Spark aggregation);
* prediction drift: the newest batch scores against the previous scoring dates' and against the
  champion's reference scores;
* realised accuracy (monitoring.accuracy): scores whose labels are complete, against what happened.

Each outcome says whether its trigger condition holds and why; it is stored as one object per check
and date (`monitoring/checks/<check>/<date>.json`), so checks running in parallel never write the same
object and a rerun for a date replaces its outcome (monitoring.outcomes). The trigger policy reads these series.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pyspark.sql import functions as sf

from monitoring.accuracy import accuracy_condition, accuracy_plot_html, update_accuracy_series, write_accuracy_plot
from monitoring.drift import (
    MONITORED_CATEGORICAL,
    MONITORED_NUMERIC,
    DriftConfig,
    DriftResult,
    Profile,
    detect_drift,
    evidently_html,
    profile_frame,
    profile_spark,
    reference_profile,
    sample_spark,
)
from monitoring.outcomes import (
    INFERENCE_DRIFT,
    PREDICTION_DRIFT,
    REALISED_ACCURACY,
    SCORING_DRIFT,
    CheckOutcome,
    record_outcome,
)
from propensity.catalog import table_name
from propensity.errors import PropensityError
from propensity.feature_table import feature_snapshot, scoring_features
from propensity.lake import resolve_date
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.storage import Storage
from propensity.tables import HISTORIC_SCORES, SCORE_DATE, partitions
from propensity.tracking import CHAMPION, ModelRef, alias_version, configure

# Artifacts logged with each batch model at training (components.training).
REFERENCE_PROFILE = "monitoring/profile.json"
REFERENCE_SAMPLE = "monitoring/reference.parquet"
INFERENCE_PREFIX = "inference"  # serving.inference_log.PREFIX: where the predictor's log is published


@dataclass(frozen=True)
class Reference:
    model: ModelRef
    profile: Profile
    sample: pd.DataFrame  # bounded; only for the HTML report


def champion(settings: Settings) -> ModelRef:
    found = alias_version(settings, settings.model_name, CHAMPION)
    if found is None:
        raise PropensityError("no champion model yet; run the training pipeline before monitoring")
    return found


def champion_reference(settings: Settings, model: ModelRef) -> Reference:
    """The champion's reference profile and sample, logged with it at training."""
    configure(settings)
    sample = _reference_sample(model)
    return Reference(model, _stored_profile(model) or reference_profile(sample), sample)


def champion_profile(settings: Settings, model: ModelRef) -> Profile:
    """The champion's reference profile alone (what a check without an HTML report needs); the
    reference sample is downloaded only for a model trained before profiles were stored."""
    configure(settings)
    return _stored_profile(model) or reference_profile(_reference_sample(model))


def _stored_profile(model: ModelRef) -> Profile | None:
    try:
        return Profile.from_json(mlflow.artifacts.load_dict(f"runs:/{model.run_id}/{REFERENCE_PROFILE}"))
    except Exception:  # a model trained before profiles were stored: its logged test rows are the reference
        return None


def _reference_sample(model: ModelRef) -> pd.DataFrame:
    return pd.read_parquet(mlflow.artifacts.download_artifacts(run_id=model.run_id, artifact_path=REFERENCE_SAMPLE))


# Outcome records ---------------------------------------------------------------------------------


def _outcome(check: str, as_of: str, model: ModelRef, holds: bool, reason: str, **details: Any) -> CheckOutcome:
    return CheckOutcome(check, as_of, holds, reason, datetime.now(UTC).isoformat(), model.version, details)


def _drift_reason(what: str, result: DriftResult) -> str:
    drifted = sorted(name for name, c in result.columns.items() if c.drifted)
    listed = f": {', '.join(drifted)}" if drifted else ""
    return (
        f"{what}: {result.drifted_columns} of {len(result.columns)} columns drifted "
        f"({result.drifted_share:.0%}){listed}"
    )


# The checks --------------------------------------------------------------------------------------


def check_scoring_drift(
    settings: Settings, as_of_date: str | None = None
) -> tuple[CheckOutcome, DriftResult | None, str]:
    """The scoring population's features as of a date, aggregated by Spark, against the reference."""
    config = DriftConfig.from_settings(settings)
    model = champion(settings)
    as_of = resolve_date(settings, as_of_date)
    reference = champion_reference(settings, model)
    features = feature_snapshot(settings, as_of)
    frame = scoring_features(spark_session(settings, "propensity-monitoring"), settings, features)
    numeric = [c for c in MONITORED_NUMERIC if c in frame.columns]
    profile = profile_spark(frame, numeric, MONITORED_CATEGORICAL)
    if profile.rows < settings.drift_min_rows:
        reason = f"scoring population of {as_of.date()}: {profile.rows} customers are too few to judge drift"
        outcome = _outcome(SCORING_DRIFT, str(as_of.date()), model, False, reason)
        record_outcome(settings, outcome)
        return outcome, None, ""
    result = detect_drift(reference.profile, profile, config)
    sample = sample_spark(frame.select(*numeric, *MONITORED_CATEGORICAL), profile.rows, settings.drift_sample_rows)
    html = evidently_html(reference.sample, sample, config.share_threshold)
    reason = _drift_reason(f"scoring population of {as_of.date()}", result)
    outcome = _outcome(SCORING_DRIFT, str(as_of.date()), model, result.drift_detected, reason, drift=result.to_json())
    record_outcome(settings, outcome)
    return outcome, result, html


def check_prediction_drift(
    settings: Settings, as_of_date: str | None = None
) -> tuple[CheckOutcome, dict[str, DriftResult]]:
    """The newest batch scores (on or before the date) against the previous scoring dates' scores and
    against the champion's scores on its test rows."""
    config = DriftConfig.from_settings(settings)
    model = champion(settings)
    as_of = resolve_date(settings, as_of_date)
    key = str(as_of.date())
    reference = champion_profile(settings, model)
    dates = [d for d in partitions(settings, HISTORIC_SCORES, SCORE_DATE) if d <= key]
    if not dates:
        outcome = _outcome(
            PREDICTION_DRIFT, key, model, False, f"no batch scores on or before {key}: run batch scoring first"
        )
        record_outcome(settings, outcome)
        return outcome, {}
    spark = spark_session(settings, "propensity-monitoring")

    def scores(days: list[str]) -> Profile:
        frame = spark.table(table_name(settings, HISTORIC_SCORES)).where(sf.col(SCORE_DATE).isin(days))
        return profile_spark(frame, ["score"], [])

    newest, previous = dates[-1], dates[-1 - settings.prediction_drift_previous_dates : -1]
    current = scores([newest])
    if current.rows < settings.drift_min_rows:
        reason = f"scores of {newest}: {current.rows} customers are too few to judge drift"
        outcome = _outcome(PREDICTION_DRIFT, key, model, False, reason)
        record_outcome(settings, outcome)
        return outcome, {}
    results = {"vs_reference": detect_drift(_only(reference, "score"), current, config)}
    if previous:
        results["vs_previous"] = detect_drift(scores(previous), current, config)
    parts = [
        f"{name.replace('_', ' ')} {r.columns['score'].distance:.3f} (threshold {r.columns['score'].threshold})"
        for name, r in results.items()
    ]
    against = f"{len(previous)} earlier dates" if previous else "no earlier dates"
    reason = f"scores of {newest} ({current.rows} customers; {against}): " + "; ".join(parts)
    holds = any(r.drift_detected for r in results.values())
    details = {name: r.to_json() for name, r in results.items()} | {"score_date": newest}
    outcome = _outcome(PREDICTION_DRIFT, key, model, holds, reason, **details)
    record_outcome(settings, outcome)
    return outcome, results


def _only(profile: Profile, column: str) -> Profile:
    return Profile(profile.rows, {column: profile.columns[column]})


def check_inference_drift(
    settings: Settings, as_of_date: str | None = None, seed: int = 0
) -> tuple[CheckOutcome, DriftResult | None, str]:
    """What the predictor really saw and answered in the `inference_window_days` before the date
    (midnight UTC, as the scoring inputs), from a bounded uniform sample, against the champion's
    reference. The window follows the date, not the wall clock."""
    config = DriftConfig.from_settings(settings)
    model = champion(settings)
    as_of = resolve_date(settings, as_of_date)
    key = str(as_of.date())
    start, end = inference_window(as_of, settings.inference_window_days)
    sample, seen = sample_inference_log(Storage(settings), start, end, settings.drift_sample_rows, seed)
    window = f"inference log {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
    if sample.empty:
        outcome = _outcome(INFERENCE_DRIFT, key, model, False, f"{window}: no requests logged")
        record_outcome(settings, outcome)
        return outcome, None, ""
    if len(sample) < settings.drift_min_rows:
        reason = (
            f"{window}: {len(sample)} requests are too few to judge drift (drift_min_rows {settings.drift_min_rows})"
        )
        outcome = _outcome(INFERENCE_DRIFT, key, model, False, reason, requests=seen)
        record_outcome(settings, outcome)
        return outcome, None, ""
    reference = champion_reference(settings, model)
    numeric = [c for c in MONITORED_NUMERIC if c in sample.columns]
    categorical = [c for c in MONITORED_CATEGORICAL if c in sample.columns]
    result = detect_drift(reference.profile, profile_frame(sample, numeric, categorical), config)
    html = evidently_html(reference.sample, sample, config.share_threshold)
    reason = _drift_reason(f"{window} ({seen} requests, {len(sample)} sampled)", result)
    outcome = _outcome(
        INFERENCE_DRIFT, key, model, result.drift_detected, reason, drift=result.to_json(), requests=seen
    )
    record_outcome(settings, outcome)
    return outcome, result, html


def inference_window(as_of: pd.Timestamp, days: int) -> tuple[datetime, datetime]:
    """The `days` before the date's midnight (UTC): the traffic a check for that date judges, whatever
    the wall clock says when it runs."""
    end = datetime.combine(as_of.date(), datetime.min.time(), tzinfo=UTC)
    return end - timedelta(days=days), end


def _window_keys(storage: Storage, start: datetime, end: datetime) -> Iterator[str]:
    """The segments that may hold records of [start, end): a segment lives under the day it was
    opened, so one opened the day before the window may hold its first records."""
    day = start.date() - timedelta(days=1)
    while day <= end.date():
        yield from storage.keys(f"{INFERENCE_PREFIX}/date={day}")  # as serving.inference_log names them
        day += timedelta(days=1)


def _read_segment(storage: Storage, key: str) -> pd.DataFrame:
    data = storage.read_bytes(key)
    if data is None:
        return pd.DataFrame()
    if key.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pandas()
    if key.endswith(".jsonl"):
        return pd.DataFrame([json.loads(line) for line in data.decode().splitlines() if line.strip()])
    return pd.DataFrame()


def sample_inference_log(
    storage: Storage, start: datetime, end: datetime, max_rows: int, seed: int = 0
) -> tuple[pd.DataFrame, int]:
    """A uniform sample of at most `max_rows` records logged in [start, end), and how many there were.

    Segments are read one at a time; each record gets a random key and the `max_rows` largest keys
    are kept, so memory holds the sample and one segment, whatever the window's size.
    """
    rng = np.random.default_rng(seed)
    kept = pd.DataFrame()
    seen = 0
    for key in _window_keys(storage, start, end):
        segment = _read_segment(storage, key)
        if segment.empty or "logged_at" not in segment.columns:
            continue
        logged = pd.to_datetime(segment["logged_at"], utc=True, errors="coerce", format="ISO8601")
        segment = segment[(logged >= pd.Timestamp(start)) & (logged < pd.Timestamp(end))]
        seen += len(segment)
        segment = segment.assign(_key=rng.random(len(segment)))
        kept = pd.concat([kept, segment], ignore_index=True) if len(kept) else segment
        if len(kept) > max_rows:
            kept = kept.nlargest(max_rows, "_key")
    return kept.drop(columns="_key", errors="ignore").reset_index(drop=True), seen


def check_realised_accuracy(settings: Settings, as_of_date: str | None = None) -> tuple[CheckOutcome, str]:
    """Bring the realised-accuracy series up to date (score dates whose labels completed by the
    date) and judge the newest against the floor and the model's own test AUC; the plot is the report."""
    model = champion(settings)
    as_of = resolve_date(settings, as_of_date)
    series = update_accuracy_series(settings, as_of)
    holds, reason = accuracy_condition(settings, series.points)
    html = accuracy_plot_html(series.points, settings.accuracy_auc_floor)
    plot = write_accuracy_plot(settings, series.points) if series.points else ""
    details = {"score_dates_computed": len(series.computed), "points": len(series.points), "plot": plot}
    outcome = _outcome(REALISED_ACCURACY, str(as_of.date()), model, holds, reason, **details)
    record_outcome(settings, outcome)
    return outcome, html
