"""Reference implementations for tests: the simplest correct pandas code, one snapshot at a time.

The product computes features and labels with Spark (propensity.features); tests check that its
output equals these on hand-made and random data. Too slow for real tables by design.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from propensity.features import (
    DAYS_PER_YEAR,
    ENTITY,
    EVENT_TIMESTAMP,
    LABEL,
    MEMORYLESS_CV,
    NO_ORDER_DAYS,
    SNAPSHOT_FEATURES,
)


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
            in_prev_90d=(age_days > 90) & (age_days <= 180),
            revenue_30=np.where(age_days <= 30, past["amount"], 0.0),
            revenue_90=np.where(age_days <= 90, past["amount"], 0.0),
        ).groupby(ENTITY)
        agg = grouped.agg(
            orders_total=("amount", "size"),
            orders_30d=("in_30d", "sum"),
            orders_90d=("in_90d", "sum"),
            orders_prev_90d=("in_prev_90d", "sum"),
            revenue_30d=("revenue_30", "sum"),
            revenue_90d=("revenue_90", "sum"),
            total_amount=("amount", "sum"),
            avg_items=("items", "mean"),
            last_order=("timestamp", "max"),
        )
        rhythm = pd.DataFrame(
            [_rhythm(group) for _, group in past.groupby(ENTITY)["timestamp"]],
            index=pd.Index(sorted(past[ENTITY].unique()), name=ENTITY),
            columns=["first_day", "purchase_days", "interval_cv"],
        )
        agg = agg.join(rhythm)
        known = customers.loc[customers["signup_date"] < t, [ENTITY, "signup_date"]]
        frame = known.merge(agg, left_on=ENTITY, right_index=True, how="left")
        frame[EVENT_TIMESTAMP] = t
        frame["tenure_days"] = (t - frame["signup_date"]).dt.total_seconds() / 86_400
        angle = 2 * np.pi * t.dayofyear / DAYS_PER_YEAR
        frame["season_sin"], frame["season_cos"] = np.sin(angle), np.cos(angle)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[ENTITY, EVENT_TIMESTAMP, *SNAPSHOT_FEATURES])
    out = pd.concat(frames, ignore_index=True)
    for column in ("orders_total", "orders_30d", "orders_90d", "orders_prev_90d"):
        out[column] = out[column].fillna(0).astype("int64")
    out[["revenue_30d", "revenue_90d"]] = out[["revenue_30d", "revenue_90d"]].fillna(0.0)
    out["avg_order_value"] = (out["total_amount"] / out["orders_total"].where(out["orders_total"] > 0)).fillna(0.0)
    out["avg_items"] = out["avg_items"].fillna(0.0)
    out["days_since_last_order"] = ((out[EVENT_TIMESTAMP] - out["last_order"]).dt.total_seconds() / 86_400).fillna(
        NO_ORDER_DAYS
    )
    out["tenure_days"] = out["tenure_days"].astype("float64")
    bought = out["first_day"].notna()
    days_from_first = (out[EVENT_TIMESTAMP] - out["first_day"]).dt.days
    out["purchase_interval_days"] = (days_from_first / out["purchase_days"]).where(bought, NO_ORDER_DAYS)
    out["interval_cv"] = out["interval_cv"].fillna(MEMORYLESS_CV)
    out["recency_ratio"] = (out["days_since_last_order"] / out["purchase_interval_days"]).where(bought, NO_ORDER_DAYS)
    return out[[ENTITY, EVENT_TIMESTAMP, *SNAPSHOT_FEATURES]].reset_index(drop=True)


def _rhythm(timestamps: pd.Series) -> dict[str, object]:
    """First purchase day, number of purchase days and the spread over the mean of the gaps between them."""
    days = np.sort(timestamps.dt.normalize().unique())
    gaps = np.diff(days) / np.timedelta64(1, "D")
    cv = float(np.std(gaps) / np.mean(gaps)) if len(gaps) >= 2 else MEMORYLESS_CV
    return {"first_day": pd.Timestamp(days[0]), "purchase_days": len(days), "interval_cv": cv}


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
