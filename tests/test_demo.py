"""The demo's own decisions, without running it (the whole run is tests/test_integration.py)."""

from __future__ import annotations

from propensity.demo import rescore_needless, summary_lines

NIGHT = {"score_date": "2026-05-26", "rows_scored": 1200, "latest_rows": 1200, "model_version": "1"}


def test_scoring_again_only_when_a_new_champion_was_promoted() -> None:
    # A rejected challenger (or no retraining): the champion scored the night already.
    assert rescore_needless("1", NIGHT) == "the champion v1 scored 2026-05-26 already: those scores stand"
    assert rescore_needless("2", NIGHT) is None  # a new champion: its scores replace the night's
    assert rescore_needless(None, NIGHT) is None  # no champion known: score, and let scoring say why not


def test_the_summary_says_whether_it_rescored_and_why_not() -> None:
    summary = {
        "training": {"model_version": "1", "auc": 0.85, "decision": "promote"},
        "batch_scoring": {"rows_scored": 1200, "latest_rows": 1200},
        "serving": {"requests": 1, "batch_hits": 1, "realtime_hits": 0, "errors": 0, "malformed_request_status": 400},
        "monitoring": {"drift_detected": True, "retrain_triggered": False},
        "retraining": {},
        "champion_version": "1",
        "timings_seconds": {"total": 1.0},
        "batch_scoring_after_retraining": None,
        "rescoring_skipped": rescore_needless("1", NIGHT),
    }
    assert "Rescoring       skipped: the champion v1 scored 2026-05-26 already: those scores stand" in summary_lines(
        summary
    )
    summary["batch_scoring_after_retraining"] = {**NIGHT, "model_version": "2"}
    assert "Rescoring       v2: 1200 customers scored again" in summary_lines(summary)
