import numpy as np
import pandas as pd
import pytest

from propensity.synthetic import DEFAULT_START, _draw_customers, _purchase_probability, generate


def test_generate_is_deterministic_and_well_formed() -> None:
    a, b = generate(customers=300, days=60, seed=3), generate(customers=300, days=60, seed=3)
    pd.testing.assert_frame_equal(a.transactions, b.transactions)
    pd.testing.assert_frame_equal(a.customers, b.customers)
    assert set(a.transactions["customer_id"]) <= set(a.customers["customer_id"])
    assert (a.transactions["amount"] > 0).all()
    assert a.transactions["timestamp"].between(DEFAULT_START, DEFAULT_START + pd.Timedelta(days=60)).all()
    assert a.customers["signup_date"].max() > DEFAULT_START  # new customers keep arriving


def test_longer_drifted_run_reproduces_every_earlier_day() -> None:
    short = generate(customers=300, days=60, seed=3)
    long = generate(customers=300, days=90, drift=0.9, seed=3)
    cutoff = DEFAULT_START + pd.Timedelta(days=60)
    prefix = long.transactions[long.transactions["timestamp"] < cutoff].drop(columns="transaction_id")
    pd.testing.assert_frame_equal(
        prefix.reset_index(drop=True),
        short.transactions.drop(columns="transaction_id").reset_index(drop=True),
    )


def test_drift_changes_the_last_period() -> None:
    calm = generate(customers=1000, days=90, drift=0.0, seed=5).transactions
    drifted = generate(customers=1000, days=90, drift=0.9, seed=5).transactions
    last = DEFAULT_START + pd.Timedelta(days=60)
    calm_recent, drifted_recent = calm[calm["timestamp"] >= last], drifted[drifted["timestamp"] >= last]
    assert drifted_recent["amount"].mean() > 1.5 * calm_recent["amount"].mean()
    assert len(drifted_recent) < 0.8 * len(calm_recent)


def test_behaviour_depends_on_segment() -> None:
    data = generate(customers=3000, days=90, seed=1)
    orders = data.transactions.groupby("customer_id").size()
    per_channel = data.customers.set_index("customer_id")["channel"].to_frame().join(orders.rename("n")).fillna(0)
    rates = per_channel.groupby("channel")["n"].mean()
    assert rates["app"] > rates["web"] > rates["social"]


@pytest.mark.parametrize("kwargs", [{"customers": 0}, {"days": 0}, {"drift": 1.5}])
def test_generate_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        generate(**{"customers": 10, "days": 10, **kwargs})  # type: ignore[arg-type]


def test_amounts_are_positive_floats() -> None:
    tx = generate(customers=100, days=30).transactions
    assert tx["amount"].dtype == np.float64


def _purchase_days(transactions: pd.DataFrame) -> pd.DataFrame:
    days = transactions.assign(day=transactions["timestamp"].dt.normalize())
    return days.drop_duplicates(["customer_id", "day"])


def test_some_customers_buy_on_a_cycle_and_others_at_random() -> None:
    """Regular buyers show gaps of nearly equal length (spread over mean well below 1); memoryless buyers
    show about 1. A shop of memoryless buyers only has almost no customers below 0.5."""
    days = _purchase_days(generate(customers=1500, days=540, seed=1).transactions)

    def spread(group: pd.Series) -> float:
        gaps = np.diff(np.sort(group.to_numpy())) / np.timedelta64(1, "D")
        return float(np.std(gaps) / np.mean(gaps)) if len(gaps) >= 3 else np.nan

    cv = days.groupby("customer_id")["day"].apply(spread).dropna()
    assert (cv < 0.5).mean() > 0.2 and (cv > 0.9).mean() > 0.25


def test_sales_peak_in_late_autumn() -> None:
    """November and December against the Mays and Junes on both sides of them (which cancels the
    base's growth or shrinkage over the year)."""
    tx = generate(customers=1500, days=560, seed=1).transactions
    month = tx["timestamp"].dt.to_period("M").astype(str)
    autumn = month.isin(["2025-11", "2025-12"]).sum() / 2
    spring = month.isin(["2025-05", "2025-06", "2026-05", "2026-06"]).sum() / 4
    assert autumn > 1.3 * spring


def test_interest_fades_with_time_since_signup() -> None:
    rng = np.random.default_rng(0)
    people = _draw_customers(rng, 200, 0.0, np.zeros(200), rate_boost=1.0)
    people.last_purchase = np.full(200, 1000.0)  # long ago, so no boost and no cycle is due
    young, old = (_purchase_probability(people, day, season=1.0) for day in (0, 100_000))
    assert (old < young).all() and np.allclose(old / young, 1 / 3, rtol=0.01)
