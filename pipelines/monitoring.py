"""Daily monitoring: Evidently drift against the champion's reference; drift triggers retraining."""

from kfp import dsl

from components import kfp_components as c
from pipelines.platform import REGISTRY, SPARK_DRIVER, on_cluster


@dsl.pipeline(
    name="propensity-monitoring",
    description="Check data and score drift with Evidently; significant drift starts a (debounced) training run.",
)
def monitoring_pipeline(
    as_of_date: str = "",
) -> bool:
    """as_of_date: the date whose scoring inputs are checked (empty: the day after the last transaction)."""
    features = on_cluster(c.materialize_features(as_of_date=as_of_date), SPARK_DRIVER).set_display_name(
        "Materialize features in Feast"
    )
    drift = on_cluster(c.check_drift(as_of_date=features.outputs["as_of_date"]), SPARK_DRIVER).set_display_name(
        "Check drift (Evidently)"
    )
    with dsl.If(drift.outputs["Output"] == True, name="drift-detected"):  # noqa: E712 - KFP condition
        on_cluster(
            c.trigger_retraining(as_of_date=features.outputs["as_of_date"], drift_metrics=drift.outputs["metrics"]),
            REGISTRY,
        ).set_display_name("Trigger retraining")
    return drift.outputs["Output"]
