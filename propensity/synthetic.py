"""Deterministic synthetic e-commerce data, with customers who behave more like real ones.

What drives a customer's purchases (none of it is a column the model sees):

* **Two kinds of buyer.** Regular buyers (about a third) come back on a personal cycle, every 5 to
  120 days, some punctually and some loosely; between cycles they seldom buy. Irregular buyers buy
  at random at their own rate, more often right after a purchase.
* **Rates that vary and decay.** Each customer's rate depends on country, channel and individual
  taste, and fades with the time since signup at an individual pace (down to a third). Customers
  with broader baskets buy a little more often.
* **Seasonality.** The whole shop sells more towards late November and less in late May (+-20 %).
* **Silent churn.** Every day some customers stop buying for good, without any signal.

New customers keep arriving. With `drift > 0` the last `drift_days` change: fewer but larger
orders, and new customers come mostly from one country and from social ads.

Arrivals balance churn, so with a year or more of history the active base is in a steady state.
Randomness is drawn day by day from generators seeded with (seed, day), and the number of draws per
day never depends on `days` or `drift`, so a longer or drifted run reproduces every earlier day of a
shorter undrifted one exactly. The demo relies on this to let "new data arrive".
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
REGULAR_SHARE = 0.35
SEASON_AMPLITUDE = 0.2
SEASON_PEAK_DAY_OF_YEAR = 330  # late November
# What `drift` does to the last `drift_days`: purchases fall to (1 - DRIFT_PURCHASE_DROP * drift) of
# their rate and orders grow to (1 + DRIFT_BASKET_GROWTH * drift) times their amount (at the demo's
# 0.8: a fifth as many orders, 3.4 times larger). Strong on purpose: half-way into the period the
# monitored 30-day features and the scores have moved about 1.5 times the drift thresholds whatever
# the number of customers, so the demo's first night finds it as surely as its second (a change
# close to a threshold would hold or not by the luck of the sample).
DRIFT_PURCHASE_DROP = 1.0
DRIFT_BASKET_GROWTH = 3.0


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


@dataclass
class _Customers:
    """The latent traits of every customer so far, one array each."""

    country: np.ndarray
    channel: np.ndarray
    signup_day: np.ndarray
    rate: np.ndarray  # irregular buyers' daily purchase rate before decay
    regular: np.ndarray  # comes back on a cycle
    period: np.ndarray  # regular buyers' cycle, days
    jitter: np.ndarray  # how loosely they keep it, days
    decay_days: np.ndarray  # how fast the customer's interest fades
    breadth: np.ndarray  # mean extra items per order
    churn: np.ndarray  # daily probability of leaving for good
    last_purchase: np.ndarray  # days since the last purchase (inf: never bought)
    active: np.ndarray

    def extend(self, other: _Customers) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


def _draw_customers(
    rng: np.random.Generator, n: int, drift: float, signup_day: np.ndarray, rate_boost: float
) -> _Customers:
    """`n` customers' traits: the same number of draws for any drift."""
    country, channel = _draw_segments(rng, n, drift)
    effect = np.array([COUNTRY_RATE[c] for c in country]) + np.array([CHANNEL_RATE[c] for c in channel])
    breadth = np.exp(rng.normal(np.log(1.5), 0.4, n))
    rate = np.exp(np.log(0.013) + effect + rng.normal(0.0, 0.7, n)) * np.sqrt(breadth / 1.5) * rate_boost
    period = np.clip(np.exp(rng.normal(np.log(30.0), 0.6, n) - effect), 5.0, 120.0)
    jitter = period * rng.uniform(0.05, 0.35, n)
    base_churn = np.where(channel == "social", 0.006, 0.003)
    return _Customers(
        country=country,
        channel=channel,
        signup_day=signup_day.astype(float),
        rate=rate,
        regular=rng.random(n) < REGULAR_SHARE,
        period=period,
        jitter=jitter,
        decay_days=np.exp(rng.normal(np.log(400.0), 0.7, n)),
        breadth=breadth,
        churn=base_churn * np.exp(rng.normal(0, 0.3, n)),
        last_purchase=np.full(n, np.inf),
        active=np.ones(n, dtype=bool),
    )


def _season(date: pd.Timestamp) -> float:
    return 1.0 + SEASON_AMPLITUDE * np.cos(2 * np.pi * (date.dayofyear - SEASON_PEAK_DAY_OF_YEAR) / 365.25)


def _purchase_probability(c: _Customers, day: int, season: float) -> np.ndarray:
    """Today's purchase probability of every customer."""
    fading = 1 / 3 + 2 / 3 * np.exp(-np.maximum(day - c.signup_day, 0.0) / c.decay_days)
    # Irregular: a memoryless rate, higher for a few weeks after a purchase.
    irregular = c.rate * (1.0 + 2.0 * np.exp(-c.last_purchase / 10.0))
    # Regular: likely around one cycle after the last purchase, seldom otherwise.
    due = np.exp(-0.5 * ((c.last_purchase - c.period) / c.jitter) ** 2)
    regular = np.where(np.isfinite(c.last_purchase), 0.45 * due, 0.0) + 0.2 * c.rate
    return np.where(c.regular, regular, irregular) * fading * season


# The generator holds the whole data set in one pandas process: bounds that fit in memory here.
MAX_CUSTOMERS, MAX_DAYS = 5_000_000, 3_650


def generate(
    customers: int = 5000,
    days: int = 180,
    drift: float = 0.0,
    seed: int = 7,
    drift_days: int = 30,
    start: pd.Timestamp = DEFAULT_START,
) -> SyntheticData:
    """Simulate `days` days of purchases for `customers` initial customers plus new arrivals."""
    if not (1 <= customers <= MAX_CUSTOMERS and 1 <= days <= MAX_DAYS):
        raise ValueError(
            f"customers must be 1 to {MAX_CUSTOMERS:,} and days 1 to {MAX_DAYS:,} (one process holds the data), "
            f"got {customers} and {days}"
        )
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be between 0 and 1, got {drift}")
    init_rng = np.random.default_rng([seed, 0])
    signup = -init_rng.integers(1, 730, customers)  # joined up to two years before start
    people = _draw_customers(init_rng, customers, 0.0, signup, rate_boost=1.0)
    # Where each one stands when the period starts: most bought recently, regular buyers within a cycle.
    bought_before = init_rng.random(customers) < 0.8
    since = np.where(people.regular, init_rng.random(customers) * people.period, init_rng.integers(1, 120, customers))
    people.last_purchase = np.where(bought_before, np.floor(since), np.inf)
    people.active = init_rng.random(customers) < 0.85

    arrivals_per_day = max(1, round(customers * ARRIVALS_PER_DAY_SHARE))
    drift_start = days - drift_days
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for day in range(days):
        rng = np.random.default_rng([seed, day + 1])
        drift_now = drift if day >= drift_start else 0.0
        # New customers arrive (a fixed number of draws per day), keener at first.
        people.extend(_draw_customers(rng, arrivals_per_day, drift_now, np.full(arrivals_per_day, day), 1.4))

        people.active &= rng.random(len(people.active)) >= people.churn
        date = start + pd.Timedelta(days=day)
        fewer = 1.0 - DRIFT_PURCHASE_DROP * drift_now
        p = np.clip(_purchase_probability(people, day, _season(date)) * fewer, 0.0, 0.9)
        buys = people.active & (rng.random(len(p)) < p)
        basket_noise = rng.normal(0.0, 0.5, len(p))
        items_draw = rng.poisson(people.breadth)
        seconds = rng.integers(0, 86_400, len(p))
        idx = np.flatnonzero(buys)
        if idx.size:
            log_mean = np.array([COUNTRY_BASKET[c] for c in people.country[idx]])
            amount = np.round(np.exp(log_mean + basket_noise[idx]) * (1.0 + DRIFT_BASKET_GROWTH * drift_now), 2)
            ts = date + pd.to_timedelta(seconds[idx], unit="s")
            rows.append((idx, ts.to_numpy(), amount, items_draw[idx] + 1))
        people.last_purchase = np.where(buys, 0.0, people.last_purchase + 1.0)

    country, channel, signup_day = people.country, people.channel, people.signup_day
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
