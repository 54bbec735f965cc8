"""Retraining trigger policy: a condition held in N of the last M checks, then debounced (no second
run while one is active or within the cooldown).

Every decision is recorded in `state/retraining.json` on the configured storage (the work dir, or
the object store), updated under a lock so that two monitoring runs on one machine cannot both start
a training run. What the debounce rule looks at:
* on a cluster (`PROPENSITY_KFP_HOST` set), the training runs KFP knows, with their states: a pod's
  files die with it, KFP's run states do not (an active training run blocks a new one);
* locally, the recorded history; a "running" record older than `retrain_running_expiry_hours` was
  left by a killed process and no longer blocks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitoring.outcomes import CHECKS, CheckOutcome, read_outcomes
from propensity.settings import Settings
from propensity.storage import Storage

STATE_KEY = "state/retraining.json"

RUNNING, SUCCEEDED, FAILED, SUBMITTED, SKIPPED = "running", "succeeded", "failed", "submitted", "skipped"
NOT_NEEDED = "not_needed"  # no condition held often enough: the decision is recorded all the same


@dataclass(frozen=True)
class TriggerRecord:
    triggered_at: str
    as_of_date: str
    reason: str
    status: str
    run_id: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)  # per check: held, looked_at, latest reason


def may_trigger(
    history: list[TriggerRecord], now: datetime, cooldown: timedelta, running_expiry: timedelta | None = None
) -> tuple[bool, str]:
    """Pure debounce rule over earlier decisions, oldest first (skipped, failed and not-needed ones do
    not count: retry those; with `running_expiry`, neither does a running one older than that)."""

    def expired(record: TriggerRecord) -> bool:
        started = datetime.fromisoformat(record.triggered_at)
        return running_expiry is not None and record.status == RUNNING and now - started >= running_expiry

    started = [r for r in history if r.status not in (SKIPPED, FAILED, NOT_NEEDED) and not expired(r)]
    active = [r for r in started if r.status == RUNNING]
    if active:
        return False, f"a training run is still active ({active[-1].run_id or 'started ' + active[-1].triggered_at})"
    if started:
        last = datetime.fromisoformat(started[-1].triggered_at)
        if now - last < cooldown:
            return (
                False,
                f"last retraining was triggered at {started[-1].triggered_at}, within the {cooldown} cooldown",
            )
    return True, "no active run and the cooldown has passed"


def kfp_history(settings: Settings) -> list[TriggerRecord]:
    """The training pipeline's runs on KFP, oldest first, as trigger records."""
    assert settings.kfp_host is not None
    listed = _propensity_cli(["runs", "training", "--host", settings.kfp_host])["runs"]

    def status(run: dict[str, Any]) -> str:
        return RUNNING if run["active"] else SUCCEEDED if run["state"] == "SUCCEEDED" else FAILED

    return [TriggerRecord(r["created_at"], "", "training run on KFP", status(r), r["run_id"]) for r in reversed(listed)]


def read_history(settings: Settings) -> list[TriggerRecord]:
    return [TriggerRecord(**r) for r in Storage(settings).read_json(STATE_KEY, [])]


def _write_history(settings: Settings, history: list[TriggerRecord]) -> None:
    Storage(settings).write_json(STATE_KEY, [asdict(r) for r in history])


@contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """A lock per storage location on this machine (in the system's temp dir, so nothing but the
    record is written to storage). Across machines the cluster mode asks KFP instead."""
    name = hashlib.sha256(settings.storage_url.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"propensity-retraining-{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _update(settings: Settings, record: TriggerRecord, **changes: Any) -> TriggerRecord:
    updated = replace(record, **changes)
    with _locked(settings):
        history = read_history(settings)
        history = [updated if r.triggered_at == record.triggered_at else r for r in history]
        _write_history(settings, history)
    return updated


def _propensity_cli(args: list[str]) -> dict[str, Any]:
    """Run the `propensity` CLI in a fresh process and return its --json summary.

    Pipeline steps run with _KFP_RUNTIME=true, which loads only the executor part of the kfp SDK; running
    or submitting a pipeline needs all of it, so it happens in a child process without that flag.
    """
    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    # Security lint (B603): this interpreter and this package's CLI, argv list, no shell.
    process = subprocess.run(  # nosec B603
        [sys.executable, "-m", "propensity.cli", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if process.returncode != 0:
        last = (process.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`propensity {' '.join(args)}` failed: {last}")
    return dict(json.loads(process.stdout))


def default_launcher(settings: Settings) -> Callable[[str], tuple[str, str, dict[str, Any]]]:
    """Local mode runs the training pipeline now; with a KFP host it submits a run and returns."""

    def launch(as_of_date: str) -> tuple[str, str, dict[str, Any]]:
        param = f"as_of_date={as_of_date}"
        if settings.kfp_host:
            result = _propensity_cli(["submit", "training", "--host", settings.kfp_host, "--param", param])
            return SUBMITTED, str(result["run_id"]), {}
        result = _propensity_cli(["run", "training", "--param", param])
        return SUCCEEDED, "local", dict(result["outputs"])

    return launch


def held_conditions(outcomes: dict[str, list[CheckOutcome]], as_of_date: str, window: int) -> dict[str, Any]:
    """Per check: in how many of its last `window` outcomes (dates up to `as_of_date`) the condition held."""
    counted: dict[str, Any] = {}
    for check, series in outcomes.items():
        recent = [o for o in series if o.as_of_date <= as_of_date][-window:]
        counted[check] = {
            "held": sum(o.holds for o in recent),
            "looked_at": len(recent),
            "latest": recent[-1].reason if recent else "not run yet",
        }
    return counted


def decide_retraining(
    settings: Settings,
    as_of_date: str,
    launch: Callable[[str], tuple[str, str, dict[str, Any]]] | None = None,
    now: datetime | None = None,
) -> TriggerRecord:
    """Retrain when some check's condition held in N of its last M outcomes (then debounced); the
    decision is recorded either way, with the counts and each check's latest reason."""
    n, m = settings.trigger_required_checks, settings.trigger_window_checks
    conditions = held_conditions({c: read_outcomes(settings, c) for c in CHECKS}, as_of_date, m)
    met = [check for check, c in conditions.items() if c["held"] >= n]
    counts = "; ".join(f"{check} {c['held']}/{c['looked_at']}" for check, c in conditions.items())
    if met:
        reason = f"{', '.join(met)} held in at least {n} of the last {m} checks ({counts})"
        return trigger_retraining(settings, as_of_date, reason, launch, now, conditions)
    now = now or datetime.now(UTC)
    record = TriggerRecord(
        now.isoformat(),
        as_of_date,
        f"no condition held in {n} of the last {m} checks ({counts})",
        NOT_NEEDED,
        conditions=conditions,
    )
    with _locked(settings):
        _write_history(settings, [*read_history(settings), record])
    return record


def trigger_retraining(
    settings: Settings,
    as_of_date: str,
    reason: str,
    launch: Callable[[str], tuple[str, str, dict[str, Any]]] | None = None,
    now: datetime | None = None,
    conditions: dict[str, Any] | None = None,
) -> TriggerRecord:
    """Start a training run unless debounced; every decision is recorded in the history."""
    Storage(settings).check()
    now = now or datetime.now(UTC)
    cooldown = timedelta(hours=settings.retrain_cooldown_hours)
    with _locked(settings):
        history = read_history(settings)
        if settings.kfp_host:
            allowed, why = may_trigger(kfp_history(settings), now, cooldown)
        else:
            expiry = timedelta(hours=settings.retrain_running_expiry_hours)
            allowed, why = may_trigger(history, now, cooldown, expiry)
        record = TriggerRecord(
            now.isoformat(),
            as_of_date,
            reason if allowed else f"{reason}, but {why}",
            RUNNING if allowed else SKIPPED,
            conditions=conditions or {},
        )
        _write_history(settings, [*history, record])
    if not allowed:
        return record
    try:
        status, run_id, outputs = (launch or default_launcher(settings))(as_of_date)
    except Exception:
        _update(settings, record, status=FAILED)
        raise
    return _update(settings, record, status=status, run_id=run_id, outputs=outputs)
