"""Drift from profiles: the same verdicts as Evidently's preset, from a few kilobytes per column."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from monitoring.checks import sample_inference_log
from monitoring.drift import (
    MONITORED_CATEGORICAL,
    MONITORED_NUMERIC,
    DriftConfig,
    Profile,
    detect_drift,
    evidently_result,
    profile_frame,
    profile_spark,
)
from monitoring.outcomes import CheckOutcome
from monitoring.report import decision_markdown, write_check_artifacts
from monitoring.trigger import TriggerRecord
from propensity.errors import PropensityError
from propensity.settings import Settings, get_settings
from propensity.storage import Storage

NUMERIC = list(MONITORED_NUMERIC)


def shop(rows: int, seed: int, shift: float = 0.0, scale: float = 1.0, mix: float = 0.0) -> pd.DataFrame:
    """Columns shaped like the monitored ones: skewed amounts, small counts, a few categories."""
    rng = np.random.default_rng(seed)
    frame = {c: rng.gamma(2.0, 10.0, rows) * scale + shift * 10 for c in NUMERIC}
    frame["orders_30d"] = rng.poisson(1.0 + shift, rows).astype(float)
    frame["orders_prev_90d"] = rng.choice([0.0, 1.0, 2.0], rows, p=[0.7 - mix / 2, 0.2 + mix / 2, 0.1])
    frame["country"] = rng.choice(["DE", "FR", "US"], rows, p=[0.5 - mix, 0.3, 0.2 + mix])
    frame["channel"] = rng.choice(["web", "app", "social"], rows)
    return pd.DataFrame(frame)


def profile(frame: pd.DataFrame) -> Profile:
    return profile_frame(frame, NUMERIC, MONITORED_CATEGORICAL)


@pytest.mark.slow
@pytest.mark.parametrize("change", [{}, {"shift": 0.3}, {"scale": 1.3}, {"mix": 0.25}, {"shift": 0.05}], ids=str)
def test_verdicts_match_evidently_on_the_full_frames(change: dict[str, float]) -> None:
    reference, current = shop(5000, seed=1), shop(5000, seed=2, **change)
    ours = detect_drift(profile(reference), profile(current), DriftConfig())
    theirs = evidently_result(reference, current, 0.3)
    assert set(ours.columns) == set(theirs.columns)
    same = [name for name in ours.columns if ours.columns[name].drifted == theirs.columns[name].drifted]
    assert len(same) >= 0.95 * len(ours.columns), (ours.distances(), theirs.distances())
    assert ours.drift_detected == theirs.drift_detected
    for name, column in ours.columns.items():  # the distances themselves agree closely
        assert column.distance == pytest.approx(theirs.columns[name].distance, abs=0.02), name


def test_no_change_no_drift_and_a_shift_drifts() -> None:
    calm = detect_drift(profile(shop(3000, 1)), profile(shop(3000, 2)), DriftConfig())
    assert not calm.drift_detected and calm.drifted_columns == 0
    moved = detect_drift(profile(shop(3000, 1)), profile(shop(3000, 2, shift=0.5)), DriftConfig())
    assert moved.drift_detected and moved.columns["avg_order_value"].drifted
    assert moved.columns["orders_prev_90d"].method == "jensenshannon"  # at most five values: compared as categories


@pytest.mark.slow
def test_spark_profile_equals_the_in_memory_profile(spark: SparkSession) -> None:
    frame = shop(4000, seed=3)
    frame.loc[::7, "avg_items"] = np.nan
    local, distributed = profile(frame), profile_spark(spark.createDataFrame(frame), NUMERIC, MONITORED_CATEGORICAL)
    assert distributed.rows == local.rows == 4000
    for name in NUMERIC:
        a, b = local.columns[name], distributed.columns[name]
        assert (a.rows, a.nulls) == (b.rows, b.nulls)
        assert b.std == pytest.approx(a.std, rel=1e-6) and b.mean == pytest.approx(a.mean, rel=1e-6)
        spread = float(np.ptp(a.quantiles))
        assert np.max(np.abs(np.subtract(a.quantiles, b.quantiles))) <= 0.01 * spread, name
    for name in MONITORED_CATEGORICAL:
        assert dict(local.columns[name].counts) == dict(distributed.columns[name].counts)
    # The verdict from either profile is the same, column by column, and so are the distances.
    shifted = profile(shop(4000, seed=4, shift=0.3))
    from_local, from_spark = (detect_drift(p, shifted, DriftConfig()) for p in (local, distributed))
    assert from_local.drift_detected == from_spark.drift_detected and from_local.drifted_columns > 0
    verdicts = [{name: column.drifted for name, column in r.columns.items()} for r in (from_local, from_spark)]
    assert verdicts[0] == verdicts[1]
    assert from_spark.distances() == pytest.approx(from_local.distances(), abs=0.01)


def test_profile_survives_json() -> None:
    original = profile(shop(500, 1))
    assert Profile.from_json(original.to_json()) == original


def test_thresholds_and_methods_come_from_settings(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    reference, current = profile(shop(3000, 1)), profile(shop(3000, 2, shift=0.4))
    default = detect_drift(reference, current, DriftConfig.from_settings(settings))
    assert default.columns["avg_order_value"].drifted
    monkeypatch.setenv("PROPENSITY_DRIFT_COLUMN_THRESHOLDS", '{"avg_order_value": 5.0}')
    monkeypatch.setenv("PROPENSITY_DRIFT_NUMERIC_METHOD", "psi")
    config = DriftConfig.from_settings(get_settings())
    relaxed = detect_drift(reference, current, config)
    assert relaxed.columns["avg_order_value"].threshold == 5.0 and not relaxed.columns["avg_order_value"].drifted
    assert relaxed.columns["avg_items"].method == "psi" and relaxed.columns["avg_items"].drifted
    calm = detect_drift(reference, profile(shop(3000, 3)), config)
    assert calm.columns["avg_items"].distance < 0.05  # PSI of two samples of one distribution
    monkeypatch.setenv("PROPENSITY_DRIFT_COLUMN_THRESHOLDS", '{"no_such_column": 0.2}')
    with pytest.raises(PropensityError, match="not monitored: no_such_column"):
        DriftConfig.from_settings(get_settings())


def test_a_column_without_values_now_is_skipped_not_drifted() -> None:
    current = shop(2000, 2)
    current["country"] = None
    result = detect_drift(profile(shop(2000, 1)), profile(current), DriftConfig())
    assert "country" in result.skipped and "country" not in result.columns


def _segment(storage: Storage, day: str, name: str, records: list[dict[str, object]]) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    storage.write_bytes(f"inference/date={day}/{name}.parquet", buffer.getvalue())


def test_inference_log_sample_is_bounded_uniform_and_windowed(settings: Settings) -> None:
    storage = Storage(settings)
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    for hour in range(48):  # two days of traffic, 100 requests an hour, numbered
        at = now - timedelta(hours=hour + 0.5)
        records = [{"logged_at": at.isoformat(), "n": hour * 100 + i, "score": 0.5} for i in range(100)]
        _segment(storage, f"{at:%Y-%m-%d}", f"{at:%Y-%m-%dT%H}-w{hour}", records)
    sample, seen = sample_inference_log(storage, now - timedelta(days=1), now, max_rows=600)
    assert seen == 2400 and len(sample) == 600  # only the last 24 hours; at most max_rows kept
    assert sample["n"].is_unique and sample["n"].max() < 2400
    # Uniform: each of the day's four six-hour blocks holds about a quarter of the sample.
    blocks = np.bincount(sample["n"] // 600, minlength=4)
    assert blocks.min() > 100, blocks
    everything, seen_all = sample_inference_log(storage, now - timedelta(days=3), now, max_rows=10_000)
    assert seen_all == len(everything) == 4800


class _Metrics:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_metric(self, metric: str, value: float) -> None:
        self.logged[metric] = value


def test_check_artifacts_put_our_verdict_above_the_evidently_report(tmp_path: Path) -> None:
    result = detect_drift(profile(shop(2000, 1)), profile(shop(2000, 2, mix=0.25)), DriftConfig())
    outcome = CheckOutcome("scoring_drift", "2025-06-01", True, "1 of 14 columns drifted", "now", "3", {"rows": 7})
    metrics, path = _Metrics(), tmp_path / "report.html"
    write_check_artifacts(
        outcome, [result], "<html><head></head><body class=x><p>evidently</p></body></html>", str(path), metrics
    )
    page = path.read_text()
    assert page.index("condition holds") < page.index("evidently") and "<td>country</td>" in page
    assert metrics.logged == {
        "condition_holds": 1.0,
        "drifted_share": result.drifted_share,
        "drifted_columns": float(result.drifted_columns),
        "rows": 7.0,
    }
    record = TriggerRecord(
        "now",
        "2025-06-01",
        "why",
        "not_needed",
        conditions={"scoring_drift": {"held": 1, "looked_at": 3, "latest": "a | b"}},
    )
    assert "| scoring drift | 1 | 3 | a / b |" in decision_markdown(record)


def test_the_inference_window_follows_the_date_not_the_wall_clock(settings: Settings) -> None:
    """A check for a date judges the day before its midnight, also when run months later; records in
    a segment opened before the window began still count."""
    from monitoring.checks import inference_window

    start, end = inference_window(pd.Timestamp("2025-05-11"), days=1)
    assert (start, end) == (datetime(2025, 5, 10, tzinfo=UTC), datetime(2025, 5, 11, tzinfo=UTC))
    storage = Storage(settings)
    # Opened at 23:58 on the 9th, written on into the 10th; then a segment of the 10th and one of today.
    late = [{"logged_at": f"2025-05-09T23:5{m}:00+00:00", "score": 0.5} for m in (8, 9)]
    _segment(storage, "2025-05-09", "2025-05-09T23-w1", [*late, {"logged_at": "2025-05-10T00:01:00+00:00"}])
    _segment(storage, "2025-05-10", "2025-05-10T12-w1", [{"logged_at": "2025-05-10T12:00:00+00:00"}])
    today = datetime.now(UTC)
    _segment(storage, f"{today:%Y-%m-%d}", "today-w1", [{"logged_at": today.isoformat()}])
    _, seen = sample_inference_log(storage, start, end, max_rows=100)
    assert seen == 2
