"""Feature and label logic: pure functions over DataFrames, no I/O.

Point-in-time rule: features for (customer, t) use only transactions strictly before t; the label
for (customer, t) is whether the customer buys in [t, t + horizon). Feast then joins feature rows
to training rows by `event_timestamp <= t`, so a row never sees its own future.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

ENTITY = "customer_id"
EVENT_TIMESTAMP = "event_timestamp"
LABEL = "label"

ACTIVITY_FEATURES = [
    "tenure_days",
    "orders_total",
    "orders_30d",
    "orders_90d",
    "revenue_30d",
    "revenue_90d",
    "avg_order_value",
    "avg_items",
    "days_since_last_order",
]
PROFILE_FEATURES = ["country", "channel"]
CATEGORICAL_FEATURES = PROFILE_FEATURES
BATCH_MODEL_FEATURES = ACTIVITY_FEATURES + PROFILE_FEATURES
# The real-time (cold-start) model sees what is known about a new customer at request time.
REALTIME_MODEL_FEATURES = ["tenure_days", "orders_total", "orders_90d", "revenue_90d", *PROFILE_FEATURES]
NO_ORDER_DAYS = 9999.0  # days_since_last_order for a customer who never bought
# A known customer bought within this many days; lapsed customers are scored like new ones.
ACTIVE_WINDOW_DAYS = 365


def known_customers(frame: pd.DataFrame) -> pd.DataFrame:
    """Customers with recent purchase history (the active base) get batch scores; the real-time model
    serves everyone else. A fixed window keeps the population comparable from one date to the next."""
    return frame[frame["days_since_last_order"] <= ACTIVE_WINDOW_DAYS]


def snapshot_dates(first: pd.Timestamp, last: pd.Timestamp, every_days: int) -> list[pd.Timestamp]:
    """Dates every `every_days` days ending exactly at `last` (the as-of date), none before `first`."""
    last = pd.Timestamp(last).normalize()
    dates = []
    current = last
    while current >= first:
        dates.append(current)
        current -= pd.Timedelta(days=every_days)
    return sorted(dates)


def activity_features(
    customers: pd.DataFrame, transactions: pd.DataFrame, dates: Sequence[pd.Timestamp]
) -> pd.DataFrame:
    """One row per (customer signed up by t, t) with behaviour features from transactions before t."""
    tx = transactions[[ENTITY, "timestamp", "amount", "items"]]
    frames = []
    for t in dates:
        t = pd.Timestamp(t)
        past = tx[tx["timestamp"] < t]
        age_days = (t - past["timestamp"]).dt.total_seconds() / 86_400
        grouped = past.assign(
            in_30d=age_days <= 30,
            in_90d=age_days <= 90,
            revenue_30=np.where(age_days <= 30, past["amount"], 0.0),
            revenue_90=np.where(age_days <= 90, past["amount"], 0.0),
        ).groupby(ENTITY)
        agg = grouped.agg(
            orders_total=("amount", "size"),
            orders_30d=("in_30d", "sum"),
            orders_90d=("in_90d", "sum"),
            revenue_30d=("revenue_30", "sum"),
            revenue_90d=("revenue_90", "sum"),
            total_amount=("amount", "sum"),
            avg_items=("items", "mean"),
            last_order=("timestamp", "max"),
        )
        known = customers.loc[customers["signup_date"] < t, [ENTITY, "signup_date"]]
        frame = known.merge(agg, left_on=ENTITY, right_index=True, how="left")
        frame[EVENT_TIMESTAMP] = t
        frame["tenure_days"] = (t - frame["signup_date"]).dt.total_seconds() / 86_400
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[ENTITY, EVENT_TIMESTAMP, *ACTIVITY_FEATURES])
    out = pd.concat(frames, ignore_index=True)
    for column in ("orders_total", "orders_30d", "orders_90d"):
        out[column] = out[column].fillna(0).astype("int64")
    out[["revenue_30d", "revenue_90d"]] = out[["revenue_30d", "revenue_90d"]].fillna(0.0)
    out["avg_order_value"] = (out["total_amount"] / out["orders_total"].where(out["orders_total"] > 0)).fillna(0.0)
    out["avg_items"] = out["avg_items"].fillna(0.0)
    out["days_since_last_order"] = ((out[EVENT_TIMESTAMP] - out["last_order"]).dt.total_seconds() / 86_400).fillna(
        NO_ORDER_DAYS
    )
    out["tenure_days"] = out["tenure_days"].astype("float64")
    return out[[ENTITY, EVENT_TIMESTAMP, *ACTIVITY_FEATURES]].reset_index(drop=True)


def customer_profiles(customers: pd.DataFrame) -> pd.DataFrame:
    """Static profile rows, valid from signup on."""
    return customers.rename(columns={"signup_date": EVENT_TIMESTAMP})[[ENTITY, EVENT_TIMESTAMP, *PROFILE_FEATURES]]


def labels(entity_rows: pd.DataFrame, transactions: pd.DataFrame, horizon_days: int) -> pd.Series:
    """1 if the customer buys in [t, t + horizon_days), for each (customer_id, event_timestamp) row."""
    rows = entity_rows[[ENTITY, EVENT_TIMESTAMP]].reset_index(drop=True)
    rows["_row"] = np.arange(len(rows))
    purchases = transactions[[ENTITY, "timestamp"]].rename(columns={"timestamp": "_next"})
    matched = pd.merge_asof(
        rows.sort_values(EVENT_TIMESTAMP),
        purchases.sort_values("_next"),
        left_on=EVENT_TIMESTAMP,
        right_on="_next",
        by=ENTITY,
        direction="forward",
        allow_exact_matches=True,
    ).sort_values("_row")
    bought = matched["_next"].notna() & (matched["_next"] < matched[EVENT_TIMESTAMP] + pd.Timedelta(days=horizon_days))
    return pd.Series(bought.astype("int64").to_numpy(), index=entity_rows.index, name=LABEL)


def training_snapshot_dates(
    as_of: pd.Timestamp, window_days: int, horizon_days: int, every_days: int
) -> list[pd.Timestamp]:
    """Snapshot dates of a training set: every label window closes by `as_of`."""
    last_labelled = pd.Timestamp(as_of).normalize() - pd.Timedelta(days=horizon_days)
    return snapshot_dates(last_labelled - pd.Timedelta(days=window_days), last_labelled, every_days)


def training_entities(customers: pd.DataFrame, dates: Sequence[pd.Timestamp]) -> pd.DataFrame:
    """Entity rows (customer, t) for every customer signed up before each snapshot date t."""
    frames = [
        pd.DataFrame({ENTITY: customers.loc[customers["signup_date"] < t, ENTITY], EVENT_TIMESTAMP: pd.Timestamp(t)})
        for t in dates
    ]
    if not frames:
        raise ValueError("no snapshot dates given for the training set")
    return pd.concat(frames, ignore_index=True)


def fill_missing_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Defaults for a customer the feature store knows nothing about (a brand-new customer)."""
    defaults: dict[str, object] = {column: 0.0 for column in ACTIVITY_FEATURES}
    defaults["days_since_last_order"] = NO_ORDER_DAYS
    defaults.update({column: "unknown" for column in PROFILE_FEATURES})
    out = frame.copy()
    for column, value in defaults.items():
        if column in out.columns:
            out[column] = out[column].fillna(value)
    return out
