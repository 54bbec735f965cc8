"""Realised accuracy: exact figures on a hand-made lake, incremental and rerun-safe updates, and the
trigger condition against the floor and the model's own test AUC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from monitoring.accuracy import (
    PLOT_KEY,
    SERIES_KEY,
    AccuracyPoint,
    accuracy_condition,
    accuracy_plot_html,
    mann_whitney_auc,
    read_accuracy_series,
    realised_accuracy,
    update_accuracy_series,
    write_accuracy_plot,
)
from propensity.errors import PropensityError
from propensity.lake import ingest
from propensity.metrics import expected_calibration_error
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.storage import Storage
from propensity.tables import HISTORIC_SCORES, SCORE_DATE, overwrite_partitions

FIRST, SECOND = "2025-03-01", "2025-03-10"  # score dates; the horizon is 30 days
# (customer, country, score on FIRST, purchase days). Labels of FIRST: a purchase in [03-01, 03-31).
CUSTOMERS = [
    ("c1", "DE", 0.9, ["2025-03-05"]),  # 1
    ("c2", "DE", 0.8, ["2025-02-10"]),  # 0: bought before the window only
    ("c3", "DE", 0.4, ["2025-03-01", "2025-03-20"]),  # 1: the window's first day counts
    ("c4", "FR", 0.3, ["2025-03-30"]),  # 1: the window's last day
    ("c5", "FR", 0.3, ["2025-03-31"]),  # 0: the day after the window; ties with c4
    ("c6", "FR", 0.1, ["2025-01-15", "2025-04-20"]),  # 0 (and the lake's data runs to 04-20)
]


def pairs_auc(positives: list[float], negatives: list[float]) -> float:
    """AUC by counting every (positive, negative) pair: 1 when ranked right, 1/2 when tied."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def write_partition(settings: Settings, score_date: str, rows: list[tuple[str, float, str]]) -> None:
    """A historic scores partition as batch scoring commits it: (customer_id, score, model_version)."""
    frame = pd.DataFrame(rows, columns=["customer_id", "score", "model_version"])
    frame["scored_at"] = f"{score_date}T02:00:00+00:00"
    frame[SCORE_DATE] = score_date
    spark = spark_session(settings, "propensity-tests")
    overwrite_partitions(spark.createDataFrame(frame), settings, HISTORIC_SCORES, SCORE_DATE)


@pytest.fixture
def world(settings: Settings, spark: SparkSession, tmp_path: Path) -> Settings:
    """The hand-made lake and two historic partitions: FIRST (version 1) and SECOND (version 2)."""
    tx = pd.DataFrame(
        [(c, f"{day}T12:00:00", 10.0) for c, _, _, days in CUSTOMERS for day in days],
        columns=["customer_id", "timestamp", "amount"],
    )
    customers = pd.DataFrame(
        [(c, "2024-06-01", country, "web") for c, country, _, _ in CUSTOMERS],
        columns=["customer_id", "signup_date", "country", "channel"],
    )
    tx.to_csv(tmp_path / "tx.csv", index=False)
    customers.to_csv(tmp_path / "customers.csv", index=False)
    ingest(settings, tmp_path / "tx.csv", tmp_path / "customers.csv")
    write_partition(settings, FIRST, [(c, s, "1") for c, _, s, _ in CUSTOMERS])
    write_partition(settings, SECOND, [("c1", 0.7, "2"), ("c6", 0.2, "2")])
    return settings


def by_segment(points: list[AccuracyPoint], score_date: str) -> dict[str, AccuracyPoint]:
    return {p.segment: p for p in points if p.score_date == score_date}


def test_realised_accuracy_equals_the_hand_computation(world: Settings, spark: SparkSession) -> None:
    points = realised_accuracy(spark, world, pd.Timestamp("2025-04-01"))
    assert {p.score_date for p in points} == {FIRST}  # SECOND's window [03-10, 04-09) is still open
    first = by_segment(points, FIRST)
    assert sorted(first) == ["DE", "FR", "all"]
    overall = first["all"]
    assert (overall.model_version, overall.rows, overall.positives) == ("1", 6, 3)
    # Positives 0.9 (c1), 0.4 (c3), 0.3 (c4); negatives 0.8 (c2), 0.3 (c5), 0.1 (c6).
    # 0.9 beats all three (3); 0.4 beats 0.3 and 0.1 (2); 0.3 beats 0.1 and ties 0.3 (1.5): 6.5 of 9.
    assert overall.auc == pytest.approx(6.5 / 9)
    assert overall.auc == pytest.approx(pairs_auc([0.9, 0.4, 0.3], [0.8, 0.3, 0.1]))
    # DE: 0.9 beats 0.8, 0.4 loses to it: 1 of 2. FR: 0.3 ties 0.3 and beats 0.1: 1.5 of 2.
    assert first["DE"].auc == pytest.approx(pairs_auc([0.9, 0.4], [0.8])) == pytest.approx(0.5)
    assert first["FR"].auc == pytest.approx(pairs_auc([0.3], [0.3, 0.1])) == pytest.approx(0.75)
    squared_errors = [0.1**2, 0.8**2, 0.6**2, 0.7**2, 0.3**2, 0.1**2]
    assert overall.brier == pytest.approx(sum(squared_errors) / 6)
    # Bins: 0.9 -> |0.9 - 1|, 0.8 -> |0.8 - 0|, 0.4 -> |0.4 - 1|, 0.3 (2 rows) -> |0.3 - 0.5|, 0.1 -> |0.1 - 0|.
    assert overall.calibration_error == pytest.approx((0.1 + 0.8 + 0.6 + 2 * 0.2 + 0.1) / 6)
    # The one definition training's evaluation uses, on the same rows, gives the same figure.
    scores = {c: s for c, _, s, _ in CUSTOMERS}
    labels = [float(c in {"c1", "c3", "c4"}) for c in scores]
    assert overall.calibration_error == pytest.approx(expected_calibration_error(labels, list(scores.values())))
    assert overall.mean_score == pytest.approx(sum(s for _, _, s, _ in CUSTOMERS) / 6)
    assert overall.positive_rate == pytest.approx(0.5)
    assert (first["DE"].rows, first["DE"].positives, first["FR"].rows, first["FR"].positives) == (3, 2, 3, 1)
    assert len({p.fingerprint for p in points}) == 1


def test_one_class_has_no_auc_and_bad_dates_are_refused(world: Settings, spark: SparkSession) -> None:
    points = realised_accuracy(spark, world, pd.Timestamp("2025-04-15"), [SECOND])
    second = by_segment(points, SECOND)
    assert sorted(second) == ["DE", "FR", "all"]
    # c1 bought nothing in [03-10, 04-09), neither did c6: one class only.
    assert second["all"].auc is None and second["all"].positives == 0
    with pytest.raises(PropensityError, match="2025-03-10 have no historic scores with labels complete"):
        realised_accuracy(spark, world, pd.Timestamp("2025-04-01"), [SECOND])
    with pytest.raises(PropensityError, match="is not after the first transaction day 2025-01-15"):
        realised_accuracy(spark, world, pd.Timestamp("2024-12-01"))


def test_updates_are_incremental_and_a_rescored_date_is_recomputed(world: Settings) -> None:
    first = update_accuracy_series(world, pd.Timestamp("2025-04-01"))
    assert first.computed == [FIRST]
    assert read_accuracy_series(world) == first.points
    assert Storage(world).read_json(SERIES_KEY)[0]["score_date"] == FIRST

    later = update_accuracy_series(world, pd.Timestamp("2025-04-15"))
    assert later.computed == [SECOND]  # FIRST is kept as it was
    assert [p for p in later.points if p.score_date == FIRST] == first.points

    rerun = update_accuracy_series(world, pd.Timestamp("2025-04-15"))
    assert rerun.computed == [] and rerun.points == later.points

    # Rescored: new files, and c2 now above c1. Only FIRST is recomputed, its points replaced.
    rescored = [(c, 0.95 if c == "c2" else s, "3") for c, _, s, _ in CUSTOMERS]
    write_partition(world, FIRST, rescored)
    again = update_accuracy_series(world, pd.Timestamp("2025-04-15"))
    assert again.computed == [FIRST]
    overall = by_segment(again.points, FIRST)["all"]
    assert overall.model_version == "3"
    assert overall.auc == pytest.approx(pairs_auc([0.9, 0.4, 0.3], [0.95, 0.3, 0.1]))
    assert {p.model_version for p in again.points if p.score_date == FIRST} == {"3"}
    assert [p for p in again.points if p.score_date == SECOND] == [p for p in later.points if p.score_date == SECOND]


def test_mann_whitney_auc_counts_pairs_with_ties_as_half() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 8, size=60) / 8  # many ties
    labels = rng.integers(0, 2, size=60)
    values = np.unique(scores)
    positives = np.array([((scores == v) & (labels == 1)).sum() for v in values])
    negatives = np.array([((scores == v) & (labels == 0)).sum() for v in values])
    expected = pairs_auc(list(scores[labels == 1]), list(scores[labels == 0]))
    assert mann_whitney_auc(values[::-1], positives[::-1], negatives[::-1]) == pytest.approx(expected)
    assert mann_whitney_auc(values, positives, np.zeros_like(negatives)) is None


def point(score_date: str, auc: float | None, version: str = "1", segment: str = "all") -> AccuracyPoint:
    return AccuracyPoint(score_date, version, segment, 1000, 200, auc, 0.15, 0.02, 0.2, 0.2, "f")


def test_condition_below_the_floor_holds_and_says_why(settings: Settings) -> None:
    # An older date below the floor does not count: the newest complete date is judged.
    points = [point("2025-03-01", 0.40), point("2025-03-02", 0.55), point("2025-03-02", 0.30, segment="DE")]
    holds, reason = accuracy_condition(settings, points, test_auc=lambda version: 0.57)
    assert holds
    assert reason == "version 1 on 2025-03-02: realised AUC 0.550 over 1000 rows (200 buyers) is below the floor 0.60"


def test_condition_above_the_floor_and_near_the_test_auc_does_not_hold(settings: Settings) -> None:
    points = [point("2025-03-01", 0.40), point("2025-03-02", 0.72)]
    holds, reason = accuracy_condition(settings, points, test_auc=lambda version: 0.75)
    assert not holds
    assert "realised AUC 0.720" in reason and "at or above the floor 0.60, within 0.05 of its test AUC 0.750" in reason
    holds, reason = accuracy_condition(settings, points, test_auc=lambda version: None)
    assert not holds and "test AUC unknown" in reason


def test_condition_holds_when_far_below_the_test_auc(settings: Settings) -> None:
    asked: list[str] = []

    def test_auc(version: str) -> float:
        asked.append(version)
        return 0.80

    holds, reason = accuracy_condition(settings, [point("2025-03-02", 0.72, version="7")], test_auc=test_auc)
    assert holds and asked == ["7"]
    assert reason.endswith("is more than 0.05 below its test AUC 0.800")
    assert accuracy_condition(settings, [point("2025-03-02", 0.76, version="7")], test_auc=test_auc)[0] is False


def test_condition_without_complete_labels_or_with_one_class(settings: Settings) -> None:
    assert accuracy_condition(settings, [], test_auc=lambda v: 0.8) == (False, "no score date has complete labels yet")
    holds, reason = accuracy_condition(settings, [point("2025-03-02", None)], test_auc=lambda v: 0.8)
    assert not holds and "AUC undefined" in reason and "one class only" in reason


def test_plot_page_embeds_a_png_and_the_table(settings: Settings) -> None:
    points = [point("2025-03-01", 0.70), point("2025-03-02", 0.66), point("2025-03-02", 0.61, version="2")]
    page = accuracy_plot_html([*points, point("2025-03-02", 0.5, segment="DE")], 0.6)
    assert page.count("data:image/png;base64,") == 1
    assert "<td>DE</td>" in page and "<td>0.6100</td>" in page
    assert "data:image/png;base64," in accuracy_plot_html([], 0.6)
    uri = write_accuracy_plot(settings, points)
    assert uri == Storage(settings).uri(PLOT_KEY)
    data = Storage(settings).read_bytes(PLOT_KEY)
    assert data is not None and data.startswith(b"\x89PNG")


def test_the_plot_spans_the_score_dates_it_shows() -> None:
    """One point is shown over a few days, not years either side; several over their own span."""
    import matplotlib.dates

    from monitoring.accuracy import _figure

    def span(points: list[AccuracyPoint]) -> tuple[pd.Timestamp, pd.Timestamp]:
        low, high = _figure(points, 0.6).axes[0].get_xlim()
        return tuple(pd.Timestamp(matplotlib.dates.num2date(x)).tz_localize(None) for x in (low, high))  # type: ignore[return-value]

    low, high = span([point("2025-03-02", 0.70)])
    assert low < pd.Timestamp("2025-03-02") < high and high - low <= pd.Timedelta(days=3)
    low, high = span([point("2025-03-01", 0.70), point("2025-05-30", 0.66, version="2")])
    assert low < pd.Timestamp("2025-03-01") and pd.Timestamp("2025-05-30") < high
    assert high - low <= pd.Timedelta(days=100)


def test_accuracy_is_the_same_after_maintenance_expired_the_snapshots_it_came_from(
    world: Settings, spark: SparkSession
) -> None:
    """A complete date is at least the label horizon old, older than the retention may be: its
    rows are read from the current snapshot, not from the expired one that last changed it. Its
    fingerprint (that snapshot) is unknown from then on: "None", until the date is rescored."""
    from dataclasses import replace

    from components.maintenance import maintain_tables

    before = realised_accuracy(spark, world, pd.Timestamp("2025-04-01"))
    done = maintain_tables(world, now=datetime.now(UTC) + timedelta(days=world.table_retention_days + 1))["tables"]
    assert set(done) == {"transactions", "customers", HISTORIC_SCORES}
    assert done[HISTORIC_SCORES]["snapshots_kept"] == 1 and done[HISTORIC_SCORES]["files_expired"] > 0
    after = realised_accuracy(spark, world, pd.Timestamp("2025-04-01"))
    assert {p.fingerprint for p in after} == {"None"} and {p.fingerprint for p in before} != {"None"}
    assert [replace(p, fingerprint="") for p in after] == [replace(p, fingerprint="") for p in before]
