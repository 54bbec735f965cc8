"""The promotion gate: compare the challenger with the champion, register, move aliases."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from components.training import predict_scores, test_rows
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


def decide(
    challenger_auc: float, champion_auc: float | None, min_auc: float, min_improvement: float
) -> tuple[str, str]:
    """Pure promotion rule: beat the absolute floor, then the champion by the required margin."""
    if challenger_auc < min_auc:
        return REJECT, f"challenger AUC {challenger_auc:.4f} is below the floor {min_auc:.4f}"
    if champion_auc is None:
        return PROMOTE, f"no champion yet; challenger AUC {challenger_auc:.4f} clears the floor {min_auc:.4f}"
    if challenger_auc >= champion_auc + min_improvement:
        return (
            PROMOTE,
            f"challenger AUC {challenger_auc:.4f} >= champion {champion_auc:.4f} + {min_improvement:.4f}",
        )
    return (
        REJECT,
        f"challenger AUC {challenger_auc:.4f} < champion {champion_auc:.4f} + {min_improvement:.4f}",
    )


def compare_with_champion(settings: Settings, training_set: Path, challenger_auc: float) -> Decision:
    """Score the current champion on the challenger's test snapshots, so both face the same data."""
    champion = alias_version(settings, settings.model_name, CHAMPION)
    champion_auc = None
    if champion is not None:
        from sklearn.metrics import roc_auc_score

        test = test_rows(training_set)
        champion_auc = float(
            roc_auc_score(test[F.LABEL], predict_scores(load_sklearn(champion), test, F.BATCH_MODEL_FEATURES))
        )
    decision, reason = decide(challenger_auc, champion_auc, settings.min_auc, settings.min_auc_improvement)
    return Decision(decision, reason, challenger_auc, champion_auc, champion.version if champion else None)


@dataclass(frozen=True)
class Registered:
    batch: ModelRef
    realtime: ModelRef


def register_models(settings: Settings, batch_run_id: str, realtime_run_id: str, decision: Decision) -> Registered:
    """Register both models as the new challenger, with the gate's decision on the version.

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
    client.set_registered_model_alias(settings.model_name, CHALLENGER, batch.version)
    client.set_registered_model_alias(settings.realtime_model_name, CHALLENGER, realtime.version)
    return Registered(
        ModelRef(settings.model_name, str(batch.version), batch_run_id),
        ModelRef(settings.realtime_model_name, str(realtime.version), realtime_run_id),
    )
