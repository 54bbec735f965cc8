"""Debounce of retraining: no second run while one is active or within the cooldown."""

from datetime import UTC, datetime, timedelta

import pytest

from monitoring.trigger import (
    FAILED,
    RUNNING,
    SKIPPED,
    STATE_KEY,
    SUCCEEDED,
    TriggerRecord,
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
