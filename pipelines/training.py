"""Training pipeline: Feast -> Great Expectations gate -> candidates -> evaluation -> MLflow."""

from typing import NamedTuple

from kfp import dsl

from components import kfp_components as c
from components.candidates import DEFAULT_CANDIDATES
from pipelines.platform import REGISTRY, SPARK_DRIVER, TRAINING, on_cluster


@dsl.pipeline(
    name="propensity-training",
    description="Build a point-in-time training set from Feast, validate it, train candidates, "
    "evaluate the best against the champion, register it in MLflow and deploy it if it wins.",
)
def training_pipeline(
    as_of_date: str = "",
    training_window_days: int = 0,
    label_horizon_days: int = 0,
    candidates: list = DEFAULT_CANDIDATES,
) -> NamedTuple("TrainingOutputs", model_version=str, auc=float, decision=str):
    """as_of_date: last day of data to learn from (empty: the day after the last transaction).
    training_window_days: how far back the labelled snapshots go; label_horizon_days: the label's
    window (will the customer buy within it?). 0 means the deployment's setting
    (PROPENSITY_TRAINING_WINDOW_DAYS, 120; PROPENSITY_LABEL_HORIZON_DAYS, 30), so a run started by
    the retraining trigger uses the same horizon as monitoring. Later steps read both from the
    training set's lineage."""
    features = on_cluster(
        c.materialize_features(
            as_of_date=as_of_date, training_window_days=training_window_days, label_horizon_days=label_horizon_days
        ),
        SPARK_DRIVER,
    ).set_display_name("Materialize features in Feast")
    training_set = on_cluster(
        c.build_training_set(
            as_of_date=features.outputs["as_of_date"],
            training_window_days=training_window_days,
            label_horizon_days=label_horizon_days,
        ),
        SPARK_DRIVER,
    ).set_display_name("Build point-in-time training set")
    validation = on_cluster(
        c.validate_data(training_set=training_set.outputs["training_set"]), SPARK_DRIVER
    ).set_display_name("Validate data (Great Expectations)")
    # One step reads the training set once and fits every candidate, rather than one pod per
    # candidate each reading the whole set.
    best = (
        on_cluster(
            c.train_candidates(
                training_set=training_set.outputs["training_set"],
                candidates=candidates,
                pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ),
            TRAINING,
        )
        .after(validation)
        .set_display_name("Train candidates, select the best")
    )
    realtime = on_cluster(
        c.train_realtime_model(
            training_set=training_set.outputs["training_set"], pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER
        ),
        TRAINING,
    ).after(validation)
    realtime.set_display_name("Train real-time (cold-start) model")
    evaluation = on_cluster(
        c.evaluate_model(training_set=training_set.outputs["training_set"], run_id=best.outputs["run_id"]), TRAINING
    ).set_display_name("Evaluate overall and per country")
    # The champion may have moved since the last run: always compare again.
    gate = on_cluster(
        c.compare_with_champion(
            training_set=training_set.outputs["training_set"],
            challenger_run_id=best.outputs["run_id"],
            realtime_run_id=realtime.output,
        ),
        REGISTRY,
    ).set_display_name("Compare with champion")
    gate.after(evaluation)
    registered = on_cluster(
        c.register_models(
            batch_run_id=best.outputs["run_id"],
            realtime_run_id=realtime.output,
            gate_report=gate.outputs["report"],
        ),
        REGISTRY,
    ).set_display_name("Register in MLflow (challenger)")
    with dsl.If(gate.outputs["Output"] == "promote", name="challenger-wins"):
        promoted = on_cluster(
            c.promote_to_champion(
                model_version=registered.outputs["model_version"],
                realtime_model_version=registered.outputs["realtime_model_version"],
            ),
            REGISTRY,
        ).set_display_name("Promote to champion")
        # Canary, smoke requests, then all traffic, or the previous spec and champion restored.
        on_cluster(c.deploy_release(model_version=registered.outputs["model_version"]), REGISTRY).after(
            promoted
        ).set_display_name("Deploy (canary, automatic rollback)")
    outputs = NamedTuple("TrainingOutputs", model_version=str, auc=float, decision=str)
    return outputs(registered.outputs["model_version"], evaluation.outputs["Output"], gate.outputs["Output"])
