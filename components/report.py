"""Model quality in numbers and pictures: baselines, calibration, lift, the release report.

Pure functions of labels and scores (no MLflow, no I/O) so the evaluation step, the gate and the
model-quality benchmark compute exactly the same figures.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from components.candidates import BASELINES
from propensity import features as F
from propensity.charts import png_img
from propensity.metrics import expected_calibration_error

RFM_FEATURES = ["days_since_last_order", "orders_90d", "revenue_90d"]


@dataclass(frozen=True)
class Quality:
    """How well one model's scores rank and how honest they are as probabilities."""

    auc: float
    pr_auc: float
    brier: float
    calibration_error: float  # expected calibration error (propensity.metrics: equal-width score bins)
    top_decile_capture: float  # share of all buyers found in the 10% highest scores

    def row(self, name: str) -> str:
        return (
            f"| {name} | {self.auc:.4f} | {self.pr_auc:.4f} | {self.brier:.4f} | {self.calibration_error:.4f} "
            f"| {self.top_decile_capture:.1%} |"
        )


QUALITY_HEADER = "| model | AUC | PR-AUC | Brier | calibration error | top-decile capture |\n|---|---|---|---|---|---|"


def calibration_points(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean score and observed rate per score quantile bin (a reliability curve for the chart, with bin
    sizes: quantile bins keep a point for every decile where scores crowd near 0). The calibration
    error itself is `propensity.metrics.expected_calibration_error`."""
    frame = pd.DataFrame({"label": np.asarray(labels), "score": np.asarray(scores, dtype=float)})
    frame["bin"] = pd.qcut(frame["score"].rank(method="first"), q=min(bins, len(frame)), labels=False)
    return frame.groupby("bin").agg(predicted=("score", "mean"), observed=("label", "mean"), rows=("label", "size"))


def cumulative_gains(labels: np.ndarray, scores: np.ndarray, groups: int = 10) -> pd.DataFrame:
    """Share of buyers captured by the top 10%, 20%, ... of scores, and the lift over random.

    Rows with equal scores cannot be told apart: each counts as the mean label of its tie (the
    expected capture when ties are broken at random), so a constant score captures 10% in 10%."""
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked = scores[order], np.asarray(labels, dtype=float)[order]
    _, starts, counts = np.unique(-ranked_scores, return_index=True, return_counts=True)
    tie_means = np.add.reduceat(ranked, starts) / counts
    expected = np.cumsum(np.repeat(tie_means, counts))
    total = max(float(ranked.sum()), 1.0)
    shares = np.arange(1, groups + 1) / groups
    sizes = np.maximum(np.rint(shares * len(ranked)).astype(int), 1)
    captured = expected[sizes - 1] / total
    return pd.DataFrame({"share": shares, "captured": captured, "lift": captured / shares})


def quality(labels: np.ndarray, scores: np.ndarray) -> Quality:
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    return Quality(
        auc=float(roc_auc_score(labels, scores)),
        pr_auc=float(average_precision_score(labels, scores)),
        brier=float(brier_score_loss(labels, np.clip(scores, 0.0, 1.0))),
        calibration_error=expected_calibration_error(labels, scores),
        top_decile_capture=float(cumulative_gains(labels, scores)["captured"].iloc[0]),
    )


# The columns each baseline sees (components.candidates.BASELINES): one monotone feature for a
# ranking, recency, frequency and monetary value for the logistic regression.
BASELINE_FEATURES = {
    "recency_rank": ["days_since_last_order"],
    "frequency_rank": ["orders_90d"],
    "rfm_logistic_regression": RFM_FEATURES,
}


def baseline_model(kind: str) -> Any:
    """A classical baseline as an unfitted scikit-learn pipeline over the batch model's feature frame:
    a logistic regression on arcsinh-scaled (log-like, defined for refunds) columns. On one column
    the score is a monotone function of it, so it ranks exactly as that column does (a recency or
    frequency ranking) and its probabilities come from the training rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    scale = make_pipeline(FunctionTransformer(np.arcsinh), StandardScaler())
    prepare = ColumnTransformer([("rfm", scale, BASELINE_FEATURES[kind])])
    return Pipeline([("prepare", prepare), ("classify", LogisticRegression(max_iter=1000))])


def baseline_scores(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """What a model must beat, fitted on the training rows and scored on the same test rows: ranking
    by recency, ranking by frequency, and a logistic regression on recency, frequency and monetary
    value (the same models that compete as candidates)."""
    scores = {}
    for kind, name in BASELINES.items():
        model = baseline_model(kind).fit(train, train[F.LABEL])
        scores[name] = model.predict_proba(test)[:, 1]
    return scores


def quality_table(labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> str:
    rows = "\n".join(quality(labels, s).row(name) for name, s in scores.items())
    return f"{QUALITY_HEADER}\n{rows}\n"


def charts(labels: np.ndarray, scores: Mapping[str, np.ndarray]) -> str:
    """A reliability diagram and a cumulative-gains (lift) chart for each model, as inline PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (calibration, gains) = plt.subplots(1, 2, figsize=(11, 4.5))
    calibration.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    gains.plot([0, 1], [0, 1], color="grey", linestyle=":", label="random")
    for name, s in scores.items():
        points = calibration_points(labels, s)
        calibration.plot(points["predicted"], points["observed"], marker="o", label=name)
        curve = cumulative_gains(labels, s)
        gains.plot([0, *curve["share"]], [0, *curve["captured"]], marker=".", label=name)
    calibration.set(xlabel="mean predicted probability (decile)", ylabel="observed purchase rate")
    calibration.set_title("Calibration")
    gains.set(xlabel="share of customers contacted (highest scores first)", ylabel="share of buyers reached")
    gains.set_title("Cumulative gains (lift)")
    for axes in (calibration, gains):
        axes.legend(fontsize=8)
        axes.grid(alpha=0.3)
    return png_img(figure)


def segment_table(labels: np.ndarray, segments: np.ndarray, scores: Mapping[str, np.ndarray], segment: str) -> str:
    names = list(scores)
    lines = [f"| {segment} | rows | purchase rate | {' | '.join(f'AUC {n}' for n in names)} |"]
    lines.append("|" + "---|" * (3 + len(names)))
    for value in sorted(set(segments.tolist())):
        mask = segments == value
        if len(set(labels[mask].tolist())) < 2:
            continue
        aucs = " | ".join(f"{roc_auc_score(labels[mask], scores[n][mask]):.4f}" for n in names)
        lines.append(f"| {value} | {int(mask.sum())} | {labels[mask].mean():.3f} | {aucs} |")
    return "\n".join(lines) + "\n"


def markdown_to_html(text: str) -> str:
    import mistune

    return str(mistune.create_markdown(plugins=["table"])(text))


def release_report(
    title: str, summary: str, labels: np.ndarray, segments: np.ndarray, scores: Mapping[str, np.ndarray], segment: str
) -> str:
    """One HTML page for the KFP UI: the decision, quality against the champion and the baselines on
    the same rows, the per-segment table, the calibration and lift charts."""
    text = (
        f"# {title}\n\n{summary}\n\n## Quality on the same test rows ({len(labels)})\n\n"
        f"{quality_table(labels, scores)}\n## Per {segment}\n\n{segment_table(labels, segments, scores, segment)}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif'>{markdown_to_html(text)}<h2>Calibration and lift</h2>"
        f"{charts(labels, scores)}</body></html>"
    )
