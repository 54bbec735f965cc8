"""Drift of the inputs the system serves on (and of its scores) against the champion's reference."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.presets import DataDriftPreset

from propensity import features as F
from propensity.errors import PropensityError
from propensity.feature_table import scoring_features
from propensity.lake import resolve_date
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.tracking import CHAMPION, ModelRef, alias_version, configure, load_sklearn

# tenure_days and orders_total grow with the calendar for everyone: their shift is not a change in behaviour.
MONITORED_NUMERIC = [c for c in F.ACTIVITY_FEATURES if c not in ("tenure_days", "orders_total")] + ["score"]
MONITORED_CATEGORICAL = list(F.CATEGORICAL_FEATURES)


@dataclass(frozen=True)
class DriftResult:
    drift_detected: bool
    drifted_share: float
    drifted_columns: int
    columns: dict[str, float] = field(default_factory=dict)
    reference_rows: int = 0
    current_rows: int = 0


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, share_threshold: float) -> tuple[DriftResult, str]:
    """Evidently's data-drift preset; drift when at least `share_threshold` of the columns drifted."""
    definition = DataDefinition(numerical_columns=MONITORED_NUMERIC, categorical_columns=MONITORED_CATEGORICAL)
    columns = MONITORED_NUMERIC + MONITORED_CATEGORICAL
    snapshot = Report([DataDriftPreset(drift_share=share_threshold)]).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    metrics = snapshot.dict()["metrics"]
    counts = next(m["value"] for m in metrics if m["metric_name"].startswith("DriftedColumnsCount"))
    per_column = {
        m["config"]["column"]: float(m["value"]) for m in metrics if m["metric_name"].startswith("ValueDrift")
    }
    with tempfile.TemporaryDirectory() as tmp:
        html_path = Path(tmp) / "drift.html"
        snapshot.save_html(str(html_path))
        html = html_path.read_text()
    result = DriftResult(
        drift_detected=float(counts["share"]) >= share_threshold,
        drifted_share=float(counts["share"]),
        drifted_columns=int(counts["count"]),
        columns=per_column,
        reference_rows=len(reference),
        current_rows=len(current),
    )
    return result, html


def champion_reference(settings: Settings, champion: ModelRef) -> pd.DataFrame:
    """The rows the champion was evaluated on, with its scores: logged with the model at training."""
    configure(settings)
    path = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path="monitoring/reference.parquet")
    return pd.read_parquet(path)


def check_drift(settings: Settings, as_of_date: str | None = None) -> tuple[DriftResult, str]:
    """Today's scoring inputs, scored by the champion, against the champion's reference."""
    champion = alias_version(settings, settings.model_name, CHAMPION)
    if champion is None:
        raise PropensityError("no champion model yet; run the training pipeline before monitoring")
    as_of = resolve_date(settings, as_of_date)
    # Still one frame of the whole scoring population; the monitoring work samples it at scale.
    current: pd.DataFrame = scoring_features(spark_session(settings, "propensity-drift"), settings, as_of).toPandas()
    current = current.assign(score=load_sklearn(champion).predict_proba(current[F.BATCH_MODEL_FEATURES])[:, 1])
    return drift_report(champion_reference(settings, champion), current, settings.drift_share_threshold)
