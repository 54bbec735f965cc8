"""Nightly batch scoring: features as of the date, Spark scoring, latest scores to the online store,
then table maintenance (old snapshots expired, orphan files deleted)."""

from typing import NamedTuple

from kfp import dsl

from components import kfp_components as c
from pipelines.platform import SPARK_DRIVER, on_cluster


@dsl.pipeline(
    name="propensity-batch-scoring",
    description="Score every known customer with the champion into the historic and latest tables, "
    "then push the latest scores to the online store; then expire old table snapshots.",
)
def batch_scoring_pipeline(
    score_date: str = "",
) -> NamedTuple("ScoringOutputs", rows_scored=int, latest_rows=int, model_version=str):
    """score_date: the date to score as of (empty: the day after the last transaction)."""
    features = on_cluster(c.materialize_features(as_of_date=score_date), SPARK_DRIVER).set_display_name(
        "Materialize features in Feast"
    )
    scored = on_cluster(c.score_customers(score_date=features.outputs["as_of_date"]), SPARK_DRIVER).set_display_name(
        "Score customers (Spark)"
    )
    published = on_cluster(c.publish_latest_scores(), SPARK_DRIVER).after(scored)
    published.set_display_name("Publish latest scores online")
    on_cluster(c.maintain_tables(), SPARK_DRIVER).after(published).set_display_name(
        "Expire old table snapshots, delete orphan files"
    )
    outputs = NamedTuple("ScoringOutputs", rows_scored=int, latest_rows=int, model_version=str)
    return outputs(scored.outputs["rows_scored"], scored.outputs["latest_rows"], scored.outputs["model_version"])
