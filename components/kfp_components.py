"""Thin KFP wrappers: each body imports and calls one step function of the package.

Every component runs on the project image (`DEFAULT_IMAGE`, replaced at compile time by
`propensity compile --image`), which already holds kfp, so nothing is pip-installed at run time.
Settings come from `PROPENSITY_*` environment variables in the step's environment.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Output

DEFAULT_IMAGE = "propensity:0.1.0"


def component(func):
    return dsl.component(func, base_image=DEFAULT_IMAGE, install_kfp_package=False)


@component
def materialize_features(as_of_date: str, training_window_days: int = 0) -> NamedTuple(
    "Materialized", as_of_date=str, snapshots_computed=int, online_rows=int
):
    """Bring the offline feature table up to date (Spark), apply the Feast repo, push the newest snapshot online."""
    from components.features import materialize_features as step
    from propensity.settings import get_settings

    result = step(get_settings(), as_of_date or None, training_window_days or None)
    return (result.as_of_date, result.snapshots_computed, result.online_rows)


@component
def build_training_set(as_of_date: str, training_window_days: int, training_set: Output[Dataset]) -> int:
    """Point-in-time-correct labelled rows from Feast."""
    from pathlib import Path

    from components.features import as_dict
    from components.features import build_training_set as step
    from propensity.settings import get_settings

    result = step(get_settings(), Path(training_set.path), as_of_date or None, training_window_days)
    training_set.metadata.update(as_dict(result))
    return result.rows


@component
def validate_training_set(training_set: Input[Dataset], report: Output[Markdown]) -> bool:
    """Great Expectations gate: fails the run, with the failed expectations, when the data is bad."""
    import pandas as pd

    from components.validation import validate_training_set as step

    result = step(pd.read_parquet(training_set.path))
    with open(report.path, "w") as handle:
        handle.write(result.markdown())
    if not result.success:
        raise ValueError("training data failed validation: " + "; ".join(result.failed))
    return result.success


@component
def train_candidates(training_set: Input[Dataset], candidates: list, pipeline_run_id: str) -> NamedTuple(
    "Best", run_id=str, valid_auc=float
):
    """Fit every hyperparameter candidate on one read of the training set; returns the best."""
    from pathlib import Path

    from components.training import select_best
    from components.training import train_candidates as step
    from propensity.settings import get_settings

    best = select_best(step(get_settings(), Path(training_set.path), candidates, pipeline_run_id))
    return (best.run_id, best.valid_auc)


@component
def train_realtime_model(training_set: Input[Dataset], pipeline_run_id: str) -> str:
    """Fit the cold-start model used for customers without a fresh batch score."""
    from pathlib import Path

    from components.training import train_realtime_model as step
    from propensity.settings import get_settings

    return step(get_settings(), Path(training_set.path), pipeline_run_id)


@component
def evaluate_model(
    training_set: Input[Dataset],
    run_id: str,
    metrics: Output[Metrics],
    roc: Output[ClassificationMetrics],
    report: Output[Markdown],
) -> float:
    """Overall and per-segment metrics on the newest snapshots."""
    from pathlib import Path

    from components.training import confusion, evaluate_run, roc_points
    from propensity.settings import get_settings

    evaluation, scored = evaluate_run(get_settings(), Path(training_set.path), run_id)
    for name in ("auc", "average_precision", "log_loss", "brier"):
        metrics.log_metric(name, getattr(evaluation, name))
    for segment, auc in evaluation.segment_auc.items():
        metrics.log_metric(f"auc_country_{segment}", auc)
    fpr, tpr, thresholds = roc_points(scored["label"], scored["score"].to_numpy())
    roc.log_roc_curve(fpr, tpr, thresholds)
    roc.log_confusion_matrix(["no purchase", "purchase"], confusion(scored["label"], scored["score"].to_numpy()))
    with open(report.path, "w") as handle:
        handle.write(evaluation.markdown())
    return evaluation.auc


@component
def compare_with_champion(training_set: Input[Dataset], challenger_run_id: str, report: Output[Markdown]) -> str:
    """The promotion gate: floor, a significant gain over the champion on the same test rows, no
    segment regressing beyond the tolerance.

    Returns the decision alone (a single output keeps `dsl.If` on it working in kfp.local too); the
    reason and both AUCs travel in the report's metadata.
    """
    from pathlib import Path

    from components.registry import compare_with_champion as step
    from propensity.settings import get_settings

    decision = step(get_settings(), Path(training_set.path), challenger_run_id)
    with open(report.path, "w") as handle:
        handle.write(f"# Decision: {decision.decision}\n\n{decision.reason}\n")
    report.metadata.update({k: v for k, v in decision.as_dict().items() if v is not None})
    return decision.decision


@component
def register_models(batch_run_id: str, realtime_run_id: str, gate_report: Input[Markdown]) -> NamedTuple(
    "Registered", model_version=str, realtime_model_version=str
):
    """Register both models as `challenger`, tagged with the gate's decision and reason."""
    from components.registry import Decision
    from components.registry import register_models as step
    from propensity.settings import get_settings

    fields = ("decision", "reason", "challenger_auc", "champion_auc", "champion_version")
    decision = Decision(**{f: gate_report.metadata.get(f) for f in fields})
    registered = step(get_settings(), batch_run_id, realtime_run_id, decision)
    return (registered.batch.version, registered.realtime.version)


@component
def promote_to_champion(model_version: str, realtime_model_version: str) -> None:
    """Move the `champion` alias to the new versions."""
    from propensity.settings import get_settings
    from propensity.tracking import promote

    promote(get_settings(), model_version, realtime_model_version)


@component
def deploy_release(model_version: str) -> str:
    """Roll the new champion out (canary, smoke requests); on failure roll back and fail the step."""
    from components.deploy import deploy
    from propensity.settings import get_settings

    return deploy(get_settings(), model_version).detail


@component
def score_customers(score_date: str) -> NamedTuple("Scored", rows_scored=int, latest_rows=int, model_version=str):
    """Spark job: champion scores into the historic partition and the atomically switched latest table."""
    from components.batch_scoring import score_customers as step
    from propensity.settings import get_settings

    result = step(get_settings(), score_date or None)
    return (result.rows_scored, result.latest_rows, result.model_version)


@component
def publish_latest_scores() -> int:
    """Push the latest scores to the Feast online store for the predictor."""
    from components.batch_scoring import publish_latest_scores as step
    from propensity.settings import get_settings

    return step(get_settings())


@component
def check_drift(as_of_date: str, report: Output[HTML], metrics: Output[Metrics]) -> bool:
    """Evidently data drift of the current scoring inputs and scores against the champion's reference."""
    from monitoring.drift import check_drift as step
    from propensity.settings import get_settings

    result, html = step(get_settings(), as_of_date or None)
    with open(report.path, "w") as handle:
        handle.write(html)
    metrics.log_metric("drifted_share", result.drifted_share)
    metrics.log_metric("drifted_columns", result.drifted_columns)
    return result.drift_detected


@component
def trigger_retraining(as_of_date: str, drift_metrics: Input[Metrics]) -> str:
    """Start the training pipeline, debounced by the active-run and cooldown rules."""
    from monitoring.trigger import trigger_retraining as step
    from propensity.lake import resolve_date
    from propensity.settings import get_settings

    settings = get_settings()
    as_of = str(resolve_date(settings, as_of_date or None).date())
    share = float(drift_metrics.metadata.get("drifted_share", 0.0))
    return step(settings, as_of, f"drift: {share:.0%} of monitored columns drifted").status
