import numpy as np
import pandas as pd
import pytest

from propensity.synthetic import DEFAULT_START, generate


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
