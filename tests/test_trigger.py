"""Debounce of retraining: no second run while one is active or within the cooldown."""

from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import pytest

from monitoring.outcomes import (
    INFERENCE_DRIFT,
    PREDICTION_DRIFT,
    REALISED_ACCURACY,
    SCORING_DRIFT,
    CheckOutcome,
    read_outcomes,
    record_outcome,
)
from monitoring.trigger import (
    FAILED,
    NOT_NEEDED,
    RUNNING,
    SKIPPED,
    STATE_KEY,
    SUCCEEDED,
    TriggerRecord,
    decide_retraining,
    may_trigger,
    read_history,
    trigger_retraining,
)
from propensity.settings import Settings, get_settings
from propensity.storage import Storage
from tests.kfp_api import kfp_api_server

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)


def _record(hours_ago: float, status: str) -> TriggerRecord:
    return TriggerRecord((NOW - timedelta(hours=hours_ago)).isoformat(), "2025-06-30", "drift", status)


def test_may_trigger_rules() -> None:
    cooldown = timedelta(hours=24)
    assert may_trigger([], NOW, cooldown)[0]
    assert not may_trigger([_record(48, RUNNING)], NOW, cooldown)[0]
    assert not may_trigger([_record(2, SUCCEEDED)], NOW, cooldown)[0]
    assert may_trigger([_record(30, SUCCEEDED)], NOW, cooldown)[0]
    assert may_trigger([_record(30, SUCCEEDED), _record(1, SKIPPED)], NOW, cooldown)[0]
    assert may_trigger([_record(1, FAILED)], NOW, cooldown)[0]  # a failed trigger is retried


def test_a_running_record_left_by_a_killed_process_expires() -> None:
    cooldown, expiry = timedelta(hours=0), timedelta(hours=12)
    assert not may_trigger([_record(11, RUNNING)], NOW, cooldown, expiry)[0]
    assert may_trigger([_record(13, RUNNING)], NOW, cooldown, expiry)[0]
    # Cluster run states come from KFP, which knows whether a run is alive: they never expire.
    assert not may_trigger([_record(13, RUNNING)], NOW, cooldown)[0]


@pytest.mark.slow
def test_on_a_cluster_the_debounce_follows_kfp_run_states(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod's history file dies with the pod: on a cluster an active training run on KFP blocks a
    new one, whatever any local file says. The real CLI submits to a KFP API on 127.0.0.1."""
    with kfp_api_server() as api:
        monkeypatch.setenv("PROPENSITY_KFP_HOST", api.url)
        monkeypatch.setenv("PROPENSITY_RETRAIN_COOLDOWN_HOURS", "0")
        on_kfp = get_settings()
        first = trigger_retraining(on_kfp, "2025-06-30", "drift")
        (run,) = api.runs.values()
        assert first.run_id == run["run_id"] and run["runtime_config"]["parameters"] == {"as_of_date": "2025-06-30"}

        Storage(on_kfp).delete(STATE_KEY)  # a new pod: no local history
        blocked = trigger_retraining(on_kfp, "2025-07-01", "drift")
        assert blocked.status == SKIPPED and run["run_id"] in blocked.reason and len(api.runs) == 1

        run["state"] = "FAILED"  # a failed run is retried
        assert trigger_retraining(on_kfp, "2025-07-01", "drift").run_id != run["run_id"]
        assert len(api.runs) == 2
        for each in api.runs.values():
            each["state"] = "SUCCEEDED"
        monkeypatch.setenv("PROPENSITY_RETRAIN_COOLDOWN_HOURS", "24")
        assert trigger_retraining(get_settings(), "2025-07-02", "drift").status == SKIPPED  # within the cooldown


def test_second_trigger_within_cooldown_is_skipped(settings: Settings) -> None:
    launches: list[str] = []

    def launch(as_of: str) -> tuple[str, str, dict[str, str]]:
        launches.append(as_of)
        return SUCCEEDED, "run-1", {"model_version": "2"}

    first = trigger_retraining(settings, "2025-06-30", "drift", launch, now=NOW)
    second = trigger_retraining(settings, "2025-07-01", "drift", launch, now=NOW + timedelta(hours=1))
    third = trigger_retraining(settings, "2025-07-02", "drift", launch, now=NOW + timedelta(hours=25))
    assert (first.status, second.status, third.status) == (SUCCEEDED, SKIPPED, SUCCEEDED)
    assert launches == ["2025-06-30", "2025-07-02"]
    assert [r.status for r in read_history(settings)] == [SUCCEEDED, SKIPPED, SUCCEEDED]
    assert read_history(settings)[0].outputs == {"model_version": "2"}


def test_failed_launch_is_recorded_and_retried(settings: Settings) -> None:
    def broken(as_of: str) -> tuple[str, str, dict[str, str]]:
        raise RuntimeError("cluster unreachable")

    with pytest.raises(RuntimeError):
        trigger_retraining(settings, "2025-06-30", "drift", broken, now=NOW)
    assert read_history(settings)[-1].status == FAILED
    later = trigger_retraining(
        settings, "2025-06-30", "drift", lambda a: (SUCCEEDED, "r", {}), now=NOW + timedelta(minutes=5)
    )
    assert later.status == SUCCEEDED


def _checked(settings: Settings, check: str, day: str, holds: bool) -> None:
    record_outcome(settings, CheckOutcome(check, day, holds, f"{check} on {day}", NOW.isoformat()))


def test_retraining_needs_a_condition_in_n_of_the_last_m_checks(settings: Settings) -> None:
    """Defaults: 2 of the last 3. Every decision is recorded with its reason, triggered or not."""
    assert (settings.trigger_required_checks, settings.trigger_window_checks) == (2, 3)
    launches: list[str] = []

    def launch(as_of: str) -> tuple[str, str, dict[str, str]]:
        launches.append(as_of)
        return SUCCEEDED, "run-1", {}

    _checked(settings, SCORING_DRIFT, "2025-06-01", True)
    first = decide_retraining(settings, "2025-06-01", launch, now=NOW)
    assert first.status == NOT_NEEDED and "scoring_drift 1/1" in first.reason
    assert first.conditions[SCORING_DRIFT] == {"held": 1, "looked_at": 1, "latest": "scoring_drift on 2025-06-01"}
    _checked(settings, SCORING_DRIFT, "2025-06-02", False)
    _checked(settings, PREDICTION_DRIFT, "2025-06-02", True)  # another check's one-off does not add up
    assert decide_retraining(settings, "2025-06-02", launch, now=NOW).status == NOT_NEEDED
    _checked(settings, SCORING_DRIFT, "2025-06-03", True)
    third = decide_retraining(settings, "2025-06-03", launch, now=NOW + timedelta(minutes=1))
    assert third.status == SUCCEEDED and launches == ["2025-06-03"]
    assert third.reason.startswith("scoring_drift held in at least 2 of the last 3 checks")
    # Still drifting the next day, but inside the cooldown: suppressed, and why is recorded.
    _checked(settings, SCORING_DRIFT, "2025-06-04", True)
    fourth = decide_retraining(settings, "2025-06-04", launch, now=NOW + timedelta(hours=2))
    assert fourth.status == SKIPPED and "cooldown" in fourth.reason and launches == ["2025-06-03"]
    assert [r.status for r in read_history(settings)] == [NOT_NEEDED, NOT_NEEDED, SUCCEEDED, SKIPPED]


def test_old_checks_leave_the_window_and_a_rerun_replaces_its_date(settings: Settings) -> None:
    for day, holds in [("2025-06-01", True), ("2025-06-02", True), ("2025-06-03", False), ("2025-06-04", False)]:
        _checked(settings, INFERENCE_DRIFT, day, holds)
    _checked(settings, INFERENCE_DRIFT, "2025-06-05", True)
    decided = decide_retraining(settings, "2025-06-05", lambda a: (SUCCEEDED, "r", {}), now=NOW)
    assert decided.status == NOT_NEEDED and decided.conditions[INFERENCE_DRIFT]["held"] == 1
    _checked(settings, INFERENCE_DRIFT, "2025-06-05", False)  # the same date checked again
    assert [o.holds for o in read_outcomes(settings, INFERENCE_DRIFT)][-1] is False
    assert len(read_outcomes(settings, INFERENCE_DRIFT)) == 5
    # A decision as of an earlier date looks only at checks up to that date.
    earlier = decide_retraining(settings, "2025-06-02", lambda a: (SUCCEEDED, "r", {}), now=NOW)
    assert earlier.status == SUCCEEDED


def test_a_condition_held_while_a_run_is_active_is_suppressed(settings: Settings) -> None:
    history = [_record(1, RUNNING)]
    Storage(settings).write_json(STATE_KEY, [asdict(r) for r in history])
    for day in ("2025-06-01", "2025-06-02"):
        _checked(settings, REALISED_ACCURACY, day, True)
    decided = decide_retraining(settings, "2025-06-02", lambda a: (SUCCEEDED, "r", {}), now=NOW)
    assert decided.status == SKIPPED and "still active" in decided.reason
    assert decided.conditions[REALISED_ACCURACY]["held"] == 2
