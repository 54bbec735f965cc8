"""The promotion gate: compare the challenger with the champion on the same rows, register."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
from mlflow import MlflowClient

from components.training import SEGMENT, predict_scores, test_rows
from propensity import features as F
from propensity.settings import Settings
from propensity.tracking import (
    CHALLENGER,
    CHAMPION,
    REALTIME_VERSION_TAG,
    ModelRef,
    alias_version,
    configure,
    load_sklearn,
)

PROMOTE = "promote"
REJECT = "reject"


@dataclass(frozen=True)
class Decision:
    decision: str
    reason: str
    challenger_auc: float
    champion_auc: float | None
    champion_version: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def auc_difference(labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> tuple[float, float]:
    """AUC(challenger) - AUC(champion) on the same rows, and its standard error by DeLong's method
    (paired: both models score the same customers, so their errors are correlated)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    m, n = int(labels.sum()), int((~labels).sum())
    if m == 0 or n == 0:
        raise ValueError("the test rows hold only one class: no AUC to compare")
    aucs, v01, v10 = [], [], []
    for scores in (np.asarray(challenger, dtype=float), np.asarray(champion, dtype=float)):
        pos, neg = scores[labels], scores[~labels]
        all_ranks = rankdata(np.concatenate([pos, neg]))
        pos_ranks, neg_ranks = all_ranks[:m], all_ranks[m:]
        aucs.append((pos_ranks.sum() - m * (m + 1) / 2) / (m * n))
        v01.append((pos_ranks - rankdata(pos)) / n)  # per positive: share of negatives ranked below
        v10.append(1.0 - (neg_ranks - rankdata(neg)) / m)  # per negative: share of positives above
    s01, s10 = np.cov(np.vstack(v01)), np.cov(np.vstack(v10))
    variance = (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / m + (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / n
    return float(aucs[0] - aucs[1]), float(np.sqrt(max(variance, 0.0)))


@dataclass(frozen=True)
class GateRules:
    min_auc: float
    min_improvement: float
    confidence: float
    min_segment_rows: int
    segment_tolerance: float

    @classmethod
    def from_settings(cls, settings: Settings) -> GateRules:
        return cls(
            settings.min_auc,
            settings.min_auc_improvement,
            settings.gate_confidence,
            settings.gate_min_segment_rows,
            settings.gate_segment_tolerance,
        )


def decide(
    labels: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    segments: np.ndarray,
    rules: GateRules,
) -> tuple[str, str]:
    """The promotion rule, on one set of test rows scored by both models:
    1. the challenger's AUC clears the floor;
    2. it beats the champion's by more than `min_improvement` with `confidence` (the lower end of
       DeLong's one-sided interval of the paired difference): a tie or noise never promotes;
    3. no segment with at least `min_segment_rows` rows (and both classes) loses more than
       `segment_tolerance` of AUC."""
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(labels, challenger))
    if auc < rules.min_auc:
        return REJECT, f"challenger AUC {auc:.4f} is below the floor {rules.min_auc:.4f}"
    if champion is None:
        return PROMOTE, f"no champion yet; challenger AUC {auc:.4f} clears the floor {rules.min_auc:.4f}"
    difference, error = auc_difference(labels, challenger, champion)
    lower = difference - float(norm.ppf(rules.confidence)) * error
    versus = (
        f"challenger AUC {auc:.4f} vs champion {auc - difference:.4f}: difference {difference:+.4f}, "
        f"{rules.confidence:.0%} lower bound {lower:+.4f}"
    )
    if lower <= rules.min_improvement:
        return REJECT, f"{versus}, not above the required {rules.min_improvement:+.4f}"
    for segment in sorted(set(segments.tolist())):
        mask = segments == segment
        if mask.sum() < rules.min_segment_rows or len(set(labels[mask].tolist())) < 2:
            continue
        mine, theirs = roc_auc_score(labels[mask], challenger[mask]), roc_auc_score(labels[mask], champion[mask])
        if mine < theirs - rules.segment_tolerance:
            return REJECT, (
                f"{versus}, but {SEGMENT} {segment} ({int(mask.sum())} rows) falls from AUC {theirs:.4f} to "
                f"{mine:.4f}, more than the tolerance {rules.segment_tolerance:.4f}"
            )
    return PROMOTE, f"{versus}; no segment regresses beyond {rules.segment_tolerance:.4f}"


def compare_with_champion(settings: Settings, training_set: Path, challenger_run_id: str) -> Decision:
    """Score the challenger and the current champion on the same test rows and apply the rule."""
    from sklearn.metrics import roc_auc_score

    configure(settings)
    test = test_rows(training_set)
    labels = test[F.LABEL].to_numpy()
    challenger = predict_scores(
        mlflow.sklearn.load_model(f"runs:/{challenger_run_id}/model"), test, F.BATCH_MODEL_FEATURES
    )
    champion_ref = alias_version(settings, settings.model_name, CHAMPION)
    champion = (
        None if champion_ref is None else predict_scores(load_sklearn(champion_ref), test, F.BATCH_MODEL_FEATURES)
    )
    decision, reason = decide(labels, challenger, champion, test[SEGMENT].to_numpy(), GateRules.from_settings(settings))
    return Decision(
        decision,
        reason,
        float(roc_auc_score(labels, challenger)),
        None if champion is None else float(roc_auc_score(labels, champion)),
        champion_ref.version if champion_ref else None,
    )


@dataclass(frozen=True)
class Registered:
    batch: ModelRef
    realtime: ModelRef


def register_models(settings: Settings, batch_run_id: str, realtime_run_id: str, decision: Decision) -> Registered:
    """Register both models with the gate's decision and reason on the versions; only a challenger
    that passed the gate gets the `challenger` alias.

    Both versions are registered and tagged before any alias moves: if MLflow fails part way (server
    down), `challenger` still names the previous pair and the run fails."""
    configure(settings)
    client = MlflowClient()
    tags = {"decision": decision.decision, "decision_reason": decision.reason}
    batch = mlflow.register_model(f"runs:/{batch_run_id}/model", settings.model_name, tags=tags)
    realtime = mlflow.register_model(
        f"runs:/{realtime_run_id}/model",
        settings.realtime_model_name,
        tags={**tags, "batch_model_version": str(batch.version)},
    )
    client.set_model_version_tag(settings.model_name, batch.version, REALTIME_VERSION_TAG, str(realtime.version))
    if decision.decision == PROMOTE:  # a rejected version is registered with its reason, but no alias
        client.set_registered_model_alias(settings.model_name, CHALLENGER, batch.version)
        client.set_registered_model_alias(settings.realtime_model_name, CHALLENGER, realtime.version)
    return Registered(
        ModelRef(settings.model_name, str(batch.version), batch_run_id),
        ModelRef(settings.realtime_model_name, str(realtime.version), realtime_run_id),
    )
