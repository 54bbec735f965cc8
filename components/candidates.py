"""The learners training knows and the candidates it tries by default.

Kept apart from `components.training` (MLflow, scikit-learn): the training pipeline's definition
takes the default candidates as a parameter, and compiling or submitting it should not import them.
"""

from __future__ import annotations

from typing import Any

# Each candidate names its learner (`model`, default HistGradientBoosting) and that learner's parameters.
HIST_GRADIENT_BOOSTING = "hist_gradient_boosting"
LIGHTGBM = "lightgbm"
MODELS = (HIST_GRADIENT_BOOSTING, LIGHTGBM)
DEFAULT_CANDIDATES: list[dict[str, Any]] = [
    {"learning_rate": 0.05, "max_leaf_nodes": 15, "max_iter": 150},
    {"learning_rate": 0.1, "max_leaf_nodes": 31, "max_iter": 100},
    {"learning_rate": 0.1, "max_depth": 3, "max_iter": 200, "l2_regularization": 1.0},
    {"model": LIGHTGBM, "learning_rate": 0.05, "num_leaves": 15, "n_estimators": 200, "min_child_samples": 50},
]
