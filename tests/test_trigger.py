"""Debounce of retraining: no second run while one is active or within the cooldown."""

from datetime import UTC, datetime, timedelta

import pytest

from monitoring.trigger import (
    FAILED,
    RUNNING,
    SKIPPED,
    SUCCEEDED,
    TriggerRecord,
    may_trigger,
    read_history,
    trigger_retraining,
)
from propensity.settings import Settings

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
