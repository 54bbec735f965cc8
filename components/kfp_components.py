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
def materialize_features(as_of_date: str, training_window_days: int = 0, label_horizon_days: int = 0) -> NamedTuple(
    "Materialized", as_of_date=str, snapshots_computed=int, online_rows=int
):
    """Bring the offline feature table up to date (Spark), apply the Feast repo, push the newest snapshot online.
    A window or horizon of 0 means the settings' value."""
    from components.features import materialize_features as step
    from propensity.settings import get_settings

    settings = get_settings().with_values(
        training_window_days=training_window_days or None, label_horizon_days=label_horizon_days or None
    )
    result = step(settings, as_of_date or None)
    return (result.as_of_date, result.snapshots_computed, result.online_rows)


@component
def build_training_set(
    as_of_date: str, training_window_days: int, label_horizon_days: int, training_set: Output[Dataset]
) -> int:
    """Point-in-time-correct labelled rows from Feast, with their lineage in the file and the artifact."""
    from pathlib import Path

    from components.features import build_training_set as step
    from propensity.settings import get_settings

    settings = get_settings().with_values(
        training_window_days=training_window_days or None, label_horizon_days=label_horizon_days or None
    )
    info = step(settings, Path(training_set.path), as_of_date or None)
    training_set.metadata.update(info.as_dict())
    return info.rows


@component
def validate_data(training_set: Input[Dataset], report: Output[HTML], summary: Output[Markdown]) -> bool:
    """Great Expectations suites on the raw transactions, the feature table and the training set:
    fails the run, with the Data Docs report, when the data is bad."""
    from pathlib import Path

    from components.validation import validate_data as step
    from propensity.settings import get_settings

    result = step(get_settings(), Path(training_set.path))
    with open(report.path, "w") as handle:
        handle.write(result.html())
    with open(summary.path, "w") as handle:
        handle.write(result.markdown())
    if not result.success:
        raise ValueError("data failed validation: " + "; ".join(result.failed))
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
    metrics.log_metric("calibration_error", evaluation.calibration_error)
    metrics.log_metric("top_decile_capture", evaluation.top_decile_capture)
    for name, baseline in evaluation.baselines.items():
        metrics.log_metric(f"baseline_auc_{name.replace(' ', '_')}", baseline.auc)
    with open(report.path, "w") as handle:
        handle.write(evaluation.markdown())
    return evaluation.auc


@component
def compare_with_champion(
    training_set: Input[Dataset],
    challenger_run_id: str,
    realtime_run_id: str,
    report: Output[Markdown],
    quality_report: Output[HTML],
) -> str:
    """The promotion gate, one per model: the batch model must clear a floor, gain significantly over
    the champion on the same test rows and regress no segment beyond the tolerance; the real-time
    model must clear its floor on new customers and not be significantly worse than its champion.

    Returns the release's decision alone (a single output keeps `dsl.If` on it working in kfp.local
    too); both verdicts travel in the report's metadata.
    """
    from pathlib import Path

    from components.registry import compare_with_champion as step
    from propensity.settings import get_settings

    decision, page = step(get_settings(), Path(training_set.path), challenger_run_id, realtime_run_id)
    with open(report.path, "w") as handle:
        handle.write(f"# Decision: {decision.decision}\n\n{decision.markdown()}")
    with open(quality_report.path, "w") as handle:
        handle.write(page)
    report.metadata.update(decision.as_dict())
    return decision.decision


@component
def register_models(batch_run_id: str, realtime_run_id: str, gate_report: Input[Markdown]) -> NamedTuple(
    "Registered", model_version=str, realtime_model_version=str
):
    """Register both models, each tagged with the release's decision and its own gate's; only a
    release that passed gets the `challenger` alias."""
    from components.registry import Decision
    from components.registry import register_models as step
    from propensity.settings import get_settings

    decision = Decision.from_dict(dict(gate_report.metadata))
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
def maintain_tables() -> str:
    """Expire table snapshots older than the retention setting and delete orphan files (JSON summary)."""
    import json

    from components.maintenance import maintain_tables as step
    from propensity.settings import get_settings

    return json.dumps(step(get_settings()), sort_keys=True)


@component
def check_inference_drift(as_of_date: str, report: Output[HTML], metrics: Output[Metrics]) -> bool:
    """Drift of what the predictor saw and answered (the inference log's recent window) vs the reference."""
    from monitoring.checks import check_inference_drift as step
    from monitoring.report import write_check_artifacts
    from propensity.settings import get_settings

    outcome, result, html = step(get_settings(), as_of_date or None)
    write_check_artifacts(outcome, [result] if result else [], html, report.path, metrics)
    return outcome.holds


@component
def check_scoring_drift(as_of_date: str, report: Output[HTML], metrics: Output[Metrics]) -> bool:
    """Drift of the nightly scoring population's features vs the reference (aggregated by Spark)."""
    from monitoring.checks import check_scoring_drift as step
    from monitoring.report import write_check_artifacts
    from propensity.settings import get_settings

    outcome, result, html = step(get_settings(), as_of_date or None)
    write_check_artifacts(outcome, [result] if result else [], html, report.path, metrics)
    return outcome.holds


@component
def check_prediction_drift(as_of_date: str, report: Output[HTML], metrics: Output[Metrics]) -> bool:
    """Drift of the newest batch scores vs the previous scoring dates' and the reference scores."""
    from monitoring.checks import check_prediction_drift as step
    from monitoring.report import write_check_artifacts
    from propensity.settings import get_settings

    outcome, results = step(get_settings(), as_of_date or None)
    write_check_artifacts(outcome, list(results.values()), "", report.path, metrics)
    return outcome.holds


@component
def check_realised_accuracy(as_of_date: str, report: Output[HTML], metrics: Output[Metrics]) -> bool:
    """Realised AUC, Brier and calibration of past scores whose labels are complete; the series plot."""
    from monitoring.checks import check_realised_accuracy as step
    from monitoring.report import write_check_artifacts
    from propensity.settings import get_settings

    outcome, html = step(get_settings(), as_of_date or None)
    write_check_artifacts(outcome, [], html, report.path, metrics)
    return outcome.holds


@component
def decide_retraining(as_of_date: str, decision: Output[Markdown]) -> bool:
    """N-of-M over the checks' recorded outcomes, then the active-run and cooldown rules; starts the
    training pipeline when all agree. The decision and its reasons are recorded either way."""
    from monitoring.report import decision_markdown
    from monitoring.trigger import RUNNING, SUBMITTED, SUCCEEDED
    from monitoring.trigger import decide_retraining as step
    from propensity.lake import resolve_date
    from propensity.settings import get_settings

    settings = get_settings()
    record = step(settings, str(resolve_date(settings, as_of_date or None).date()))
    with open(decision.path, "w") as handle:
        handle.write(decision_markdown(record))
    return record.status in (RUNNING, SUBMITTED, SUCCEEDED)
