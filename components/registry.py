"""The promotion gate: compare the challengers with the champions on the same rows, register.

A release is the batch model and the real-time model trained together; it is promoted whole or not
at all. Each model has its own gate on the rows it will serve:

* the batch model, on the test snapshots' known customers: a floor, a significant gain over the
  champion (DeLong), no large segment regressing beyond a tolerance (`decide`);
* the real-time model, on the test snapshots' rows that look like new customers (no purchase within
  the active window): a floor, and not significantly worse than the real-time champion by more than
  the tolerance (`decide_realtime`). It need not beat it: the release exists for the batch model,
  and a cold-start model rarely improves much from one month to the next.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
from mlflow import MlflowClient

from components.candidates import BASELINES, display_name
from components.report import baseline_scores, release_report
from components.training import SEGMENT, predict_scores, realtime_test_rows, run_model_kind, split_by_time
from propensity import features as F
from propensity.settings import Settings
from propensity.tracking import (
    CHALLENGER,
    CHAMPION,
    REALTIME_VERSION_TAG,
    ModelRef,
    Release,
    configure,
    load_sklearn,
    load_sklearn_uri,
    move_release_alias,
    release_at,
)
from propensity.training_set import read_training_set

PROMOTE = "promote"
REJECT = "reject"


@dataclass(frozen=True)
class Verdict:
    """One model's gate."""

    decision: str
    reason: str
    challenger_auc: float
    champion_auc: float | None
    rows: int
    judged_on: str = "test rows"  # which rows `rows` counts, as the decision states it
    model: str = ""  # what the challenger is: its learner, or the baseline that won the selection

    @classmethod
    def of(
        cls,
        rule: tuple[str, str],
        labels: np.ndarray,
        challenger: np.ndarray,
        champion: np.ndarray | None,
        judged_on: str,
        model: str,
    ) -> Verdict:
        """A gate's (decision, reason) with both models' AUC on the rows it judged."""
        decision, reason = rule
        auc = float(_auc(labels, challenger) or 0.0)
        return cls(decision, reason, auc, _auc(labels, champion), len(labels), judged_on, model)

    @property
    def described(self) -> str:
        if not self.model:
            return ""
        baseline = " (a baseline: it beat every learner on the validation rows)" if self.is_baseline else ""
        return f", {self.model}{baseline}"

    @property
    def is_baseline(self) -> bool:
        return self.model in BASELINES.values()


@dataclass(frozen=True)
class Decision:
    """The release's: promote only if both models pass their gates."""

    decision: str
    reason: str
    champion_version: str | None
    batch: Verdict
    realtime: Verdict

    @classmethod
    def of(cls, batch: Verdict, realtime: Verdict, champion_version: str | None) -> Decision:
        decision = PROMOTE if batch.decision == realtime.decision == PROMOTE else REJECT
        return cls(decision, f"batch: {batch.reason}. real-time: {realtime.reason}", champion_version, batch, realtime)

    @classmethod
    def unchecked(cls, decision: str, reason: str) -> Decision:
        """A decision taken outside the gate (by an operator, a test or a benchmark), for both models."""
        verdict = Verdict(decision, reason, 0.0, None, 0)
        return cls(decision, reason, None, verdict, verdict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def markdown(self) -> str:
        return (
            f"**Release: {self.decision}** (champion before: version {self.champion_version or 'none'})\n\n"
            f"* batch model{self.batch.described} ({self.batch.rows} {self.batch.judged_on}): "
            f"**{self.batch.decision}**, {self.batch.reason}\n"
            f"* real-time model ({self.realtime.rows} {self.realtime.judged_on}): "
            f"**{self.realtime.decision}**, {self.realtime.reason}\n"
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Decision:
        """From `as_dict` output, also after a trip through KFP metadata (numbers come back as floats)."""

        def verdict(v: dict[str, Any]) -> Verdict:
            return Verdict(**{**v, "rows": int(v["rows"])})

        return cls(
            str(values["decision"]),
            str(values["reason"]),
            values.get("champion_version"),
            verdict(values["batch"]),
            verdict(values["realtime"]),
        )


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
    realtime_min_auc: float

    @classmethod
    def from_settings(cls, settings: Settings) -> GateRules:
        return cls(
            settings.min_auc,
            settings.min_auc_improvement,
            settings.gate_confidence,
            settings.gate_min_segment_rows,
            settings.gate_segment_tolerance,
            settings.realtime_min_auc,
        )

    @property
    def z(self) -> float:
        from scipy.stats import norm

        return float(norm.ppf(self.confidence))


def auc_of(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _floor_and_first(
    labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, floor: float, rows: str
) -> tuple[str, str] | None:
    """The rules that need no champion: a challenger below the floor is rejected; with no champion
    yet, one above it is promoted. None: compare with the champion."""
    auc = auc_of(labels, challenger)
    if auc < floor:
        return REJECT, f"challenger AUC {auc:.4f}{rows} is below the floor {floor:.4f}"
    if champion is None:
        return PROMOTE, f"no champion yet; challenger AUC {auc:.4f}{rows} clears the floor {floor:.4f}"
    return None


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
    from sklearn.metrics import roc_auc_score

    first = _floor_and_first(labels, challenger, champion, rules.min_auc, "")
    if first is not None:
        return first
    assert champion is not None  # without one, _floor_and_first has decided
    auc = auc_of(labels, challenger)
    difference, error = auc_difference(labels, challenger, champion)
    lower = difference - rules.z * error
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


def decide_realtime(
    labels: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray | None,
    rules: GateRules,
    rows_name: str = "new customers",
) -> tuple[str, str]:
    """The real-time model's rule, on rows that look like new customers: its AUC clears its floor,
    and it is not worse than the real-time champion by more than `segment_tolerance` with
    `confidence` (the upper end of DeLong's one-sided interval of the paired difference)."""
    if len(set(np.asarray(labels).tolist())) < 2:
        return REJECT, f"the {len(labels)} test rows of {rows_name} hold one class: the model cannot be checked"
    first = _floor_and_first(labels, challenger, champion, rules.realtime_min_auc, f" on {rows_name}")
    if first is not None:
        return first
    assert champion is not None  # without one, _floor_and_first has decided
    difference, error = auc_difference(labels, challenger, champion)
    auc = difference + auc_of(labels, champion)
    upper = difference + rules.z * error
    versus = (
        f"AUC {auc:.4f} on {rows_name} vs champion {auc - difference:.4f}: difference {difference:+.4f}, "
        f"{rules.confidence:.0%} upper bound {upper:+.4f}"
    )
    if upper < -rules.segment_tolerance:
        return REJECT, f"{versus}: significantly worse by more than {rules.segment_tolerance:.4f}"
    return PROMOTE, f"{versus}: not significantly worse"


def _scores(settings: Settings, run_id: str, rows: Any, features: list[str]) -> np.ndarray:
    configure(settings)
    return predict_scores(load_sklearn_uri(f"runs:/{run_id}/model"), rows, features)


def _auc(labels: np.ndarray, scores: np.ndarray | None) -> float | None:
    return None if scores is None or len(set(labels.tolist())) < 2 else auc_of(labels, scores)


def compare_with_champion(
    settings: Settings, training_set: Path, challenger_run_id: str, realtime_run_id: str
) -> tuple[Decision, str]:
    """Score each challenger and its champion on the same test rows and apply each model's rule;
    returns the decision and its HTML report (quality against the champion and the baselines, per
    segment, calibration and lift)."""
    rules = GateRules.from_settings(settings)
    frame, info = read_training_set(training_set)  # one read for both models' test rows
    split = split_by_time(F.known_customers(frame), info.label_horizon_days)
    test = split.test
    labels = test[F.LABEL].to_numpy()
    challenger = _scores(settings, challenger_run_id, test, F.BATCH_MODEL_FEATURES)
    champion_release = release_at(settings, CHAMPION)
    champion_ref = None if champion_release is None else champion_release.batch
    champion = (
        None if champion_ref is None else predict_scores(load_sklearn(champion_ref), test, F.BATCH_MODEL_FEATURES)
    )
    rule = decide(labels, challenger, champion, test[SEGMENT].to_numpy(), rules)
    model = display_name(run_model_kind(challenger_run_id))
    batch = Verdict.of(rule, labels, challenger, champion, "known-customer test rows", model)

    judged = realtime_test_rows(split_by_time(frame, info.label_horizon_days).test)
    new, new_labels = judged.rows, judged.rows[F.LABEL].to_numpy()
    features = F.REALTIME_MODEL_FEATURES
    rt_challenger = _scores(settings, realtime_run_id, new, features)
    rt_champion_ref = None if champion_release is None else champion_release.realtime
    rt_champion = None if rt_champion_ref is None else predict_scores(load_sklearn(rt_champion_ref), new, features)
    rule = decide_realtime(new_labels, rt_challenger, rt_champion, rules, judged.rows_name)
    realtime = Verdict.of(rule, new_labels, rt_challenger, rt_champion, judged.judged_on, "real-time")
    release = Decision.of(batch, realtime, champion_ref.version if champion_ref else None)
    scores = {
        "challenger": challenger,
        **({} if champion is None else {f"champion (v{release.champion_version})": champion}),
        **baseline_scores(split.train, test),
    }
    title = f"Release decision: {release.decision}"
    return release, release_report(title, release.markdown(), labels, test[SEGMENT].to_numpy(), scores, SEGMENT)


def register_models(settings: Settings, batch_run_id: str, realtime_run_id: str, decision: Decision) -> Release:
    """Register both models with the gate's decision and reason on the versions; only a challenger
    that passed the gate gets the `challenger` alias.

    Both versions are registered and tagged before any alias moves: if MLflow fails part way (server
    down), `challenger` still names the previous pair and the run fails."""
    configure(settings)
    client = MlflowClient()

    def tags(verdict: Verdict) -> dict[str, str]:
        return {
            "decision": decision.decision,
            "decision_reason": decision.reason,
            "gate": verdict.decision,
            "gate_reason": verdict.reason,
            "gate_test_rows": str(verdict.rows),
            "gate_judged_on": verdict.judged_on,
            **({"model_kind": verdict.model} if verdict.model else {}),
        }

    batch = mlflow.register_model(f"runs:/{batch_run_id}/model", settings.model_name, tags=tags(decision.batch))
    realtime = mlflow.register_model(
        f"runs:/{realtime_run_id}/model",
        settings.realtime_model_name,
        tags={**tags(decision.realtime), "batch_model_version": str(batch.version)},
    )
    client.set_model_version_tag(settings.model_name, batch.version, REALTIME_VERSION_TAG, str(realtime.version))
    if decision.decision == PROMOTE:  # a rejected version is registered with its reason, but no alias
        move_release_alias(settings, CHALLENGER, str(batch.version), str(realtime.version))
    return Release(
        ModelRef(settings.model_name, str(batch.version), batch_run_id),
        ModelRef(settings.realtime_model_name, str(realtime.version), realtime_run_id),
    )
