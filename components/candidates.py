"""The learners training knows and the candidates it tries by default.

Kept apart from `components.training` (MLflow, scikit-learn): the training pipeline's definition
takes the default candidates as a parameter, and compiling or submitting it should not import them.
"""

from __future__ import annotations

from typing import Any

# Each candidate names its learner (`model`, default HistGradientBoosting) and that learner's parameters.
HIST_GRADIENT_BOOSTING = "hist_gradient_boosting"
LIGHTGBM = "lightgbm"
LEARNERS = (HIST_GRADIENT_BOOSTING, LIGHTGBM)
# The classical baselines (components.report.baseline_model) compete as candidates in every run: on a
# shop where ranking by recency is as good as a learner, the simple model ships. They take no
# parameters. Their names as the reports print them:
BASELINES = {
    "recency_rank": "recency rank",
    "frequency_rank": "frequency rank",
    "rfm_logistic_regression": "logistic regression on RFM",
}
MODELS = (*LEARNERS, *BASELINES)


def model_kind(params: dict[str, Any]) -> str:
    return str(params.get("model", HIST_GRADIENT_BOOSTING))


def with_baselines(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates, then each baseline they do not already name."""
    named = {model_kind(p) for p in candidates}
    return [*candidates, *({"model": kind} for kind in BASELINES if kind not in named)]


def display_name(kind: str) -> str:
    return BASELINES.get(kind, kind)


DEFAULT_CANDIDATES: list[dict[str, Any]] = [
    {"learning_rate": 0.05, "max_leaf_nodes": 15, "max_iter": 150},
    {"learning_rate": 0.1, "max_leaf_nodes": 31, "max_iter": 100},
    {"learning_rate": 0.1, "max_depth": 3, "max_iter": 200, "l2_regularization": 1.0},
    {"model": LIGHTGBM, "learning_rate": 0.05, "num_leaves": 15, "n_estimators": 200, "min_child_samples": 50},
]
