"""Deterministic synthetic e-commerce data whose purchase behaviour depends on history and segment.

Each customer has a latent daily purchase rate set by country and acquisition channel plus individual
noise, a churn hazard, and a short-lived boost after each purchase (so recency and frequency carry
signal). New customers keep arriving. With `drift > 0` the last `drift_days` change: fewer but
larger orders, and new customers come mostly from one country and from social ads.

Arrivals balance churn, so with a year or more of history the active base is in a steady state and
undrifted data does not drift. Randomness is drawn day by day from generators seeded with (seed, day),
and the number of draws per day never depends on `days` or `drift`, so a longer or drifted run
reproduces every earlier day of a shorter undrifted one exactly. The demo relies on this to let "new data arrive".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

COUNTRIES = ("DE", "FR", "GB", "US", "ES", "IT")
COUNTRY_WEIGHTS = np.array([0.28, 0.18, 0.18, 0.16, 0.10, 0.10])
CHANNELS = ("web", "app", "marketplace", "social")
CHANNEL_WEIGHTS = np.array([0.45, 0.25, 0.15, 0.15])

# Log-rate effects per segment: app users buy more often, social-ads users less.
COUNTRY_RATE = {"DE": 0.10, "FR": 0.0, "GB": 0.05, "US": -0.05, "ES": -0.10, "IT": -0.10}
CHANNEL_RATE = {"web": 0.0, "app": 0.45, "marketplace": -0.15, "social": -0.50}
COUNTRY_BASKET = {"DE": 3.9, "FR": 3.8, "GB": 3.85, "US": 4.1, "ES": 3.6, "IT": 3.65}

DEFAULT_START = pd.Timestamp("2025-01-01")
ARRIVALS_PER_DAY_SHARE = 0.003  # new customers per day, as a share of the initial customers: balances churn


@dataclass(frozen=True)
class SyntheticData:
    customers: pd.DataFrame
    transactions: pd.DataFrame


def _draw_segments(rng: np.random.Generator, n: int, drift: float) -> tuple[np.ndarray, np.ndarray]:
    country_weights = COUNTRY_WEIGHTS * (1 - drift)
    country_weights[COUNTRIES.index("US")] += drift
    channel_weights = CHANNEL_WEIGHTS * (1 - drift)
    channel_weights[CHANNELS.index("social")] += drift
    countries = np.asarray(COUNTRIES)[_categorical(rng.random(n), country_weights)]
    channels = np.asarray(CHANNELS)[_categorical(rng.random(n), channel_weights)]
    return countries, channels


def _categorical(u: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: one uniform draw per item whatever the weights (keeps streams aligned)."""
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(weights) - 1)


def _base_rates(rng: np.random.Generator, countries: np.ndarray, channels: np.ndarray) -> np.ndarray:
    effect = np.array([COUNTRY_RATE[c] for c in countries]) + np.array([CHANNEL_RATE[c] for c in channels])
    return np.exp(np.log(0.012) + effect + rng.normal(0.0, 0.7, len(countries)))


def generate(
    customers: int = 5000,
    days: int = 180,
    drift: float = 0.0,
    seed: int = 7,
    drift_days: int = 30,
    start: pd.Timestamp = DEFAULT_START,
) -> SyntheticData:
    """Simulate `days` days of purchases for `customers` initial customers plus new arrivals."""
    if customers < 1 or days < 1:
        raise ValueError("customers and days must be positive")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be between 0 and 1, got {drift}")
    init_rng = np.random.default_rng([seed, 0])
    country, channel = _draw_segments(init_rng, customers, 0.0)
    signup_day = -init_rng.integers(1, 730, customers).astype(float)  # joined up to two years before start
    rate = _base_rates(init_rng, country, channel)
    churn = np.where(channel == "social", 0.006, 0.003) * np.exp(init_rng.normal(0, 0.3, customers))
    # Days since the last purchase before the period starts (inf: never bought).
    last_purchase = np.where(init_rng.random(customers) < 0.8, init_rng.integers(1, 120, customers), np.inf)
    active = init_rng.random(customers) < 0.85

    arrivals_per_day = max(1, round(customers * ARRIVALS_PER_DAY_SHARE))
    drift_start = days - drift_days
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for day in range(days):
        rng = np.random.default_rng([seed, day + 1])
        drift_now = drift if day >= drift_start else 0.0
        # New customers arrive (a fixed number of draws per day).
        new_country, new_channel = _draw_segments(rng, arrivals_per_day, drift_now)
        country = np.concatenate([country, new_country])
        channel = np.concatenate([channel, new_channel])
        signup_day = np.concatenate([signup_day, np.full(arrivals_per_day, float(day))])
        rate = np.concatenate([rate, _base_rates(rng, new_country, new_channel) * 1.4])
        new_churn = np.where(new_channel == "social", 0.006, 0.003)
        churn = np.concatenate([churn, new_churn * np.exp(rng.normal(0, 0.3, arrivals_per_day))])
        last_purchase = np.concatenate([last_purchase, np.full(arrivals_per_day, np.inf)])
        active = np.concatenate([active, np.ones(arrivals_per_day, dtype=bool)])

        active &= rng.random(len(active)) >= churn
        boost = 1.0 + 2.0 * np.exp(-last_purchase / 10.0)  # recent buyers buy again soon
        p = np.clip(rate * boost * (1.0 - 0.4 * drift_now), 0.0, 0.5)
        buys = active & (rng.random(len(active)) < p)
        basket_noise = rng.normal(0.0, 0.5, len(active))
        items_draw = rng.poisson(1.5, len(active))
        seconds = rng.integers(0, 86_400, len(active))
        idx = np.flatnonzero(buys)
        if idx.size:
            log_mean = np.array([COUNTRY_BASKET[c] for c in country[idx]])
            amount = np.round(np.exp(log_mean + basket_noise[idx]) * (1.0 + 1.5 * drift_now), 2)
            ts = start + pd.to_timedelta(day, unit="D") + pd.to_timedelta(seconds[idx], unit="s")
            rows.append((idx, ts.to_numpy(), amount, items_draw[idx] + 1))
        last_purchase = np.where(buys, 0.0, last_purchase + 1.0)

    customer_ids = np.array([f"c-{i:07d}" for i in range(len(country))])
    customers_df = pd.DataFrame(
        {
            "customer_id": customer_ids,
            "signup_date": start + pd.to_timedelta(signup_day, unit="D"),
            "country": country,
            "channel": channel,
        }
    )
    if rows:
        idx = np.concatenate([r[0] for r in rows])
        tx = pd.DataFrame(
            {
                "customer_id": customer_ids[idx],
                "timestamp": np.concatenate([r[1] for r in rows]),
                "amount": np.concatenate([r[2] for r in rows]),
                "items": np.concatenate([r[3] for r in rows]).astype("int64"),
            }
        )
    else:
        tx = pd.DataFrame({"customer_id": [], "timestamp": [], "amount": [], "items": []})
    tx = tx.sort_values(["timestamp", "customer_id"], kind="stable").reset_index(drop=True)
    tx.insert(0, "transaction_id", [f"t-{i:09d}" for i in range(len(tx))])
    return SyntheticData(customers=customers_df, transactions=tx)
