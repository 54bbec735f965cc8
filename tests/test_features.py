"""Feature and label logic on a local Spark session: hand-computed values, then equality with the
simple pandas reference (tests/reference.py) on random small data."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as sf

from propensity import features as F
from tests import reference

T = pd.Timestamp("2025-03-01")


def _customers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": ["a", "b", "c"],
            "signup_date": pd.to_datetime(["2024-01-01", "2025-02-20", "2025-03-05"]),
            "country": ["DE", "FR", "US"],
            "channel": ["web", "app", "social"],
        }
    )


def _tx(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "timestamp": pd.to_datetime([r[1] for r in rows], format="mixed"),
            "amount": [r[2] for r in rows],
            "items": np.ones(len(rows), dtype="int64"),
        }
    )


def features(spark: SparkSession, customers: pd.DataFrame, tx: pd.DataFrame, dates: list[pd.Timestamp]) -> pd.DataFrame:
    frame = F.snapshot_features(spark.createDataFrame(customers), spark.createDataFrame(tx), dates).toPandas()
    return frame.sort_values([F.EVENT_TIMESTAMP, F.ENTITY]).reset_index(drop=True)


def test_activity_features_use_only_transactions_before_the_snapshot(spark: SparkSession) -> None:
    tx = _tx(
        [
            ("a", "2024-12-15", 10.0),
            ("a", "2025-02-25", 30.0),
            ("a", "2025-03-01 00:00:00", 999.0),
            ("a", "2025-03-10", 999.0),
            ("b", "2025-02-21", 5.0),
        ]
    )
    out = features(spark, _customers(), tx, [T]).set_index("customer_id")
    assert list(out.index) == ["a", "b"]  # c signed up after t
    a = out.loc["a"]
    assert (a["orders_total"], a["orders_30d"], a["orders_90d"]) == (2, 1, 2)
    assert a["revenue_90d"] == 40.0 and a["avg_order_value"] == 20.0
    assert a["days_since_last_order"] == 4.0
    assert out.loc["b", "tenure_days"] == 9.0


def test_customer_without_orders_gets_explicit_defaults(spark: SparkSession) -> None:
    out = features(spark, _customers(), _tx([("a", "2025-01-01", 1.0)]), [T]).set_index("customer_id")
    b = out.loc["b"]
    assert b["orders_total"] == 0 and b["revenue_90d"] == 0.0
    assert b["days_since_last_order"] == F.NO_ORDER_DAYS
    assert b["purchase_interval_days"] == b["recency_ratio"] == F.NO_ORDER_DAYS
    assert b["interval_cv"] == F.MEMORYLESS_CV and b["orders_prev_90d"] == 0


def test_window_edges_are_exact(spark: SparkSession) -> None:
    # 30 days before t is inside the 30-day window, a minute earlier is not.
    tx = _tx([("a", "2025-01-30 00:00:00", 1.0), ("a", "2025-01-29 23:59:00", 2.0), ("a", "2024-12-01", 4.0)])
    a = features(spark, _customers(), tx, [T]).set_index("customer_id").loc["a"]
    assert (a["orders_30d"], a["revenue_30d"], a["orders_90d"], a["revenue_90d"]) == (1, 1.0, 3, 7.0)


def test_rhythm_trend_and_calendar(spark: SparkSession) -> None:
    # a: weekly purchase days (two orders on the last one), then silent for 14 days: twice overdue.
    # b: one purchase 8 days ago, no rhythm yet. c: signed up after t (no row).
    tx = _tx(
        [
            ("a", "2024-10-01", 1.0),  # 151 days before t: the previous 90 days
            ("a", "2025-01-25", 1.0),
            ("a", "2025-02-01", 1.0),
            ("a", "2025-02-08 10:00", 1.0),
            ("a", "2025-02-08 18:00", 1.0),
            ("a", "2025-02-15", 1.0),
            ("b", "2025-02-21", 1.0),
        ]
    )
    out = features(spark, _customers(), tx, [T]).set_index("customer_id")
    a, b = out.loc["a"], out.loc["b"]
    assert (a["orders_90d"], a["orders_prev_90d"]) == (5, 1)
    # Purchase days: Oct 1 then weekly from Jan 25; from Oct 1 to t is 151 days over 5 purchase days.
    assert a["purchase_interval_days"] == 151 / 5 and a["days_since_last_order"] == 14.0
    assert a["recency_ratio"] == pytest.approx(14.0 / (151 / 5))
    gaps = np.array([116, 7, 7, 7])
    assert a["interval_cv"] == pytest.approx(gaps.std() / gaps.mean())
    assert b["purchase_interval_days"] == 8.0 and b["recency_ratio"] == 1.0
    assert b["interval_cv"] == F.MEMORYLESS_CV  # fewer than two gaps
    # March 1 is day 60 of the year.
    assert out["season_sin"].eq(np.sin(2 * np.pi * 60 / 365.25)).all()
    assert out["season_cos"].eq(np.cos(2 * np.pi * 60 / 365.25)).all()


def test_equal_gaps_have_no_spread(spark: SparkSession) -> None:
    tx = _tx([("a", day, 1.0) for day in ("2025-02-01", "2025-02-08", "2025-02-15", "2025-02-22")])
    a = features(spark, _customers(), tx, [T]).set_index("customer_id").loc["a"]
    assert a["interval_cv"] == 0.0 and a["recency_ratio"] == 7.0 / (28 / 4)


def test_labels_cover_exactly_the_horizon(spark: SparkSession) -> None:
    rows = pd.DataFrame({"customer_id": ["a", "a", "b", "c"], "event_timestamp": [T, T - pd.Timedelta(days=40), T, T]})
    tx = _tx([("a", "2025-03-30 23:59:00", 1.0), ("b", "2025-03-31 00:00:00", 1.0), ("c", "2025-02-28", 1.0)])
    # a buys 29.99 days after t (in), b exactly 30 days after (out), c only before t (out).
    got = F.snapshot_labels(spark.createDataFrame(rows), spark.createDataFrame(tx), horizon_days=30).toPandas()
    merged = rows.merge(got, on=["customer_id", "event_timestamp"], how="left")
    assert merged[F.LABEL].tolist() == [1, 0, 0, 0]
    assert merged[F.LABEL].tolist() == reference.labels(rows, tx, horizon_days=30).tolist()


def test_active_customers_bought_within_the_window(spark: SparkSession) -> None:
    tx = _tx([("a", "2024-02-01", 1.0), ("b", "2025-02-21", 1.0), ("c", "2025-03-06", 1.0)])
    got = F.active_customers(spark.createDataFrame(_customers()), spark.createDataFrame(tx), T).toPandas()
    assert sorted(got["customer_id"]) == ["b"]  # a lapsed over a year ago, c signed up after t


def test_a_capped_training_set_keeps_the_same_rows_however_spark_partitions_them(spark: SparkSession) -> None:
    """A rebuild from recorded snapshots must keep the rows the first build kept, though Spark may
    deliver them in other partitions and another order; each snapshot date keeps its share."""
    from components.features import cap_rows

    days = [T - pd.Timedelta(days=7 * k) for k in range(4)]
    columns = ["customer_id", "event_timestamp", "label"]
    rows = pd.DataFrame([(f"c{i}", day, i % 2) for i in range(1000) for day in days], columns=columns)
    frame = spark.createDataFrame(rows)
    kept = []
    for partitions in (1, 7):
        shuffled = frame.repartition(partitions).orderBy(sf.rand(seed=partitions))
        capped, total = cap_rows(shuffled, 1000)
        kept.append(capped.toPandas().sort_values(["event_timestamp", "customer_id"]).reset_index(drop=True))
        assert total == 4000
    pd.testing.assert_frame_equal(kept[0], kept[1])
    assert 800 < len(kept[0]) < 1200
    shares = kept[0]["event_timestamp"].value_counts(normalize=True)
    assert set(shares.index) == set(days) and (shares - 0.25).abs().max() < 0.05


def test_training_snapshots_end_a_horizon_before_as_of() -> None:
    dates = F.training_snapshot_dates(pd.Timestamp("2025-06-30"), window_days=28, horizon_days=30, every_days=7)
    assert dates[-1] == pd.Timestamp("2025-05-31")
    assert dates == sorted(dates) and len(dates) == 5
    assert all((b - a).days == 7 for a, b in itertools.pairwise(dates))


def test_fill_missing_features_for_an_unknown_customer() -> None:
    frame = pd.DataFrame({c: [None] for c in F.ACTIVITY_FEATURES + F.PROFILE_FEATURES})
    filled = F.fill_missing_features(frame)
    assert filled.loc[0, "days_since_last_order"] == F.NO_ORDER_DAYS
    assert filled.loc[0, "country"] == "unknown" and filled.loc[0, "orders_total"] == 0


def _random_world(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[pd.Timestamp]]:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2025-01-01")
    n_customers, n_tx = int(rng.integers(1, 30)), int(rng.integers(0, 300))
    customers = pd.DataFrame(
        {
            "customer_id": [f"{i:05d}" for i in range(n_customers)],
            "signup_date": start + pd.to_timedelta(rng.integers(-100, 200, n_customers), unit="D"),
            "country": "DE",
            "channel": "web",
        }
    )
    tx = pd.DataFrame(
        {
            "customer_id": customers["customer_id"].to_numpy()[rng.integers(0, n_customers, n_tx)],
            # Times to the second, some exactly at midnight (window and snapshot edges).
            "timestamp": start
            + pd.to_timedelta(rng.integers(-150, 250, n_tx), unit="D")
            + pd.to_timedelta(np.where(rng.random(n_tx) < 0.2, 0, rng.integers(0, 86_400, n_tx)), unit="s"),
            "amount": np.round(rng.exponential(40.0, n_tx), 2),
            "items": rng.integers(1, 5, n_tx).astype("int64"),
        }
    )
    dates = sorted({start + pd.Timedelta(days=int(d)) for d in rng.integers(-120, 260, int(rng.integers(1, 8)))})
    return customers, tx, dates


@pytest.mark.parametrize("seed", range(8))
def test_spark_features_equal_the_reference_on_random_data(spark: SparkSession, seed: int) -> None:
    customers, tx, dates = _random_world(seed)
    got = features(spark, customers, tx, dates)
    expected = reference.activity_features(customers, tx, dates)
    expected = expected.sort_values([F.EVENT_TIMESTAMP, F.ENTITY]).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        got[[F.ENTITY, F.EVENT_TIMESTAMP, *F.SNAPSHOT_FEATURES]],
        expected[[F.ENTITY, F.EVENT_TIMESTAMP, *F.SNAPSHOT_FEATURES]],
        check_dtype=False,
        check_datetimelike_compat=True,
        rtol=1e-9,
    )


@pytest.mark.parametrize("seed", range(4))
def test_spark_labels_equal_the_reference_on_random_data(spark: SparkSession, seed: int) -> None:
    customers, tx, dates = _random_world(seed)
    entities = customers[["customer_id"]].merge(pd.DataFrame({F.EVENT_TIMESTAMP: dates}), how="cross")
    got = F.snapshot_labels(spark.createDataFrame(entities), spark.createDataFrame(tx), horizon_days=30).toPandas()
    merged = entities.merge(got, on=[F.ENTITY, F.EVENT_TIMESTAMP], how="left")
    assert merged[F.LABEL].tolist() == reference.labels(entities, tx, horizon_days=30).tolist()
