import itertools

import pandas as pd

from propensity import features as F

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
            "items": 1,
        }
    )


def test_activity_features_use_only_transactions_before_the_snapshot() -> None:
    tx = _tx(
        [
            ("a", "2024-12-15", 10.0),
            ("a", "2025-02-25", 30.0),
            ("a", "2025-03-01 00:00:00", 999.0),
            ("a", "2025-03-10", 999.0),
            ("b", "2025-02-21", 5.0),
        ]
    )
    out = F.activity_features(_customers(), tx, [T]).set_index("customer_id")
    assert list(out.index) == ["a", "b"]  # c signed up after t
    a = out.loc["a"]
    assert (a["orders_total"], a["orders_30d"], a["orders_90d"]) == (2, 1, 2)
    assert a["revenue_90d"] == 40.0 and a["avg_order_value"] == 20.0
    assert a["days_since_last_order"] == 4.0
    assert out.loc["b", "tenure_days"] == 9.0


def test_customer_without_orders_gets_explicit_defaults() -> None:
    out = F.activity_features(_customers(), _tx([("a", "2025-01-01", 1.0)]), [T]).set_index("customer_id")
    b = out.loc["b"]
    assert b["orders_total"] == 0 and b["revenue_90d"] == 0.0
    assert b["days_since_last_order"] == F.NO_ORDER_DAYS


def test_labels_cover_exactly_the_horizon() -> None:
    rows = pd.DataFrame({"customer_id": ["a", "a", "b", "c"], "event_timestamp": [T, T - pd.Timedelta(days=40), T, T]})
    tx = _tx([("a", "2025-03-30 23:59:00", 1.0), ("b", "2025-03-31 00:00:00", 1.0), ("c", "2025-02-28", 1.0)])
    # a buys 29.99 days after t (in), b exactly 30 days after (out), c only before t (out).
    assert F.labels(rows, tx, horizon_days=30).tolist() == [1, 0, 0, 0]


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
