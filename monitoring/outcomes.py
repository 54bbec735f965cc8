"""The monitoring checks' outcome records: one object per check and date
(`monitoring/checks/<check>/<date>.json`), so checks running in parallel never write the same object
and a rerun for a date replaces its outcome. The checks (monitoring.checks) write them; the trigger
policy (monitoring.trigger) reads their series, and needs nothing else of the checks: deciding
whether to retrain imports neither MLflow nor Spark."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from propensity.settings import Settings
from propensity.storage import Storage

INFERENCE_DRIFT, SCORING_DRIFT, PREDICTION_DRIFT, REALISED_ACCURACY = (
    "inference_drift",
    "scoring_drift",
    "prediction_drift",
    "realised_accuracy",
)
CHECKS = (INFERENCE_DRIFT, SCORING_DRIFT, PREDICTION_DRIFT, REALISED_ACCURACY)
CHECKS_PREFIX = "monitoring/checks"


@dataclass(frozen=True)
class CheckOutcome:
    check: str
    as_of_date: str
    holds: bool  # the check's trigger condition
    reason: str
    checked_at: str
    model_version: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def record_outcome(settings: Settings, outcome: CheckOutcome) -> None:
    Storage(settings).write_json(f"{CHECKS_PREFIX}/{outcome.check}/{outcome.as_of_date}.json", asdict(outcome))


def read_outcomes(settings: Settings, check: str) -> list[CheckOutcome]:
    """One check's outcomes, oldest date first."""
    storage = Storage(settings)
    outcomes = [CheckOutcome(**storage.read_json(key)) for key in storage.keys(f"{CHECKS_PREFIX}/{check}")]
    return sorted(outcomes, key=lambda o: o.as_of_date)
