"""Daily monitoring (after the nightly scoring): four checks, each its own step and artifact, then
one retraining decision over their recorded outcomes (N of the last M, debounced)."""

from kfp import dsl

from components import kfp_components as c
from pipelines.platform import REGISTRY, SPARK_DRIVER, TRAINING, on_cluster


@dsl.pipeline(
    name="propensity-monitoring",
    description="Drift of the inference log, the scoring population and the scores; realised accuracy; "
    "a condition that held in N of the last M checks starts a (debounced) training run.",
)
def monitoring_pipeline(
    as_of_date: str = "",
) -> bool:
    """as_of_date: the date whose scoring inputs are checked (empty: the day after the last transaction)."""
    features = on_cluster(c.materialize_features(as_of_date=as_of_date), SPARK_DRIVER).set_display_name(
        "Materialize features in Feast"
    )
    as_of = features.outputs["as_of_date"]
    checks = [
        on_cluster(c.check_inference_drift(as_of_date=as_of), TRAINING).set_display_name("Inference-log drift"),
        on_cluster(c.check_scoring_drift(as_of_date=as_of), SPARK_DRIVER).set_display_name("Scoring-population drift"),
        on_cluster(c.check_prediction_drift(as_of_date=as_of), SPARK_DRIVER).set_display_name("Prediction drift"),
        on_cluster(c.check_realised_accuracy(as_of_date=as_of), SPARK_DRIVER).set_display_name("Realised accuracy"),
    ]
    decision = on_cluster(c.decide_retraining(as_of_date=as_of), REGISTRY).set_display_name("Decide on retraining")
    for check in checks:
        decision.after(check)
    return decision.outputs["Output"]
