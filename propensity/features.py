"""Feature and label logic: pure functions over (Spark) DataFrames, no I/O.

Point-in-time rule: features for (customer, t) use only transactions strictly before t; the label
for (customer, t) is whether the customer buys in [t, t + horizon). Feast then joins feature rows
to training rows by `event_timestamp <= t`, so a row never sees its own future.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as sf

ENTITY = "customer_id"
EVENT_TIMESTAMP = "event_timestamp"
LABEL = "label"

# What the first model saw: tenure, lifetime and 30/90-day recency/frequency/monetary windows.
WINDOW_FEATURES = [
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
ACTIVITY_FEATURES = [
    *WINDOW_FEATURES,
    # Trend: the 90 days before the last 90.
    "orders_prev_90d",
    # The customer's own rhythm, counted in purchase days (several orders on one day are one visit).
    "purchase_interval_days",  # days from the first purchase day to t, per purchase day
    "interval_cv",  # spread of the gaps between purchase days: ~0 regular, ~1 memoryless, >1 bursty
    "recency_ratio",  # days_since_last_order / purchase_interval_days: above 1 means overdue
]
# The shop's calendar at the snapshot date (the same for every customer): where in the year it is.
CALENDAR_FEATURES = ["season_sin", "season_cos"]
SNAPSHOT_FEATURES = ACTIVITY_FEATURES + CALENDAR_FEATURES  # the feature table's columns
PROFILE_FEATURES = ["country", "channel"]
CATEGORICAL_FEATURES = PROFILE_FEATURES
BATCH_MODEL_FEATURES = SNAPSHOT_FEATURES + PROFILE_FEATURES
# The real-time (cold-start) model sees what is known about a new customer at request time.
REALTIME_MODEL_FEATURES = ["tenure_days", "orders_total", "orders_90d", "revenue_90d", *PROFILE_FEATURES]
UNKNOWN = "unknown"  # a profile field nobody told us
NO_ORDER_DAYS = 9999.0  # days_since_last_order (and the rhythm features) of a customer who never bought
MEMORYLESS_CV = 1.0  # interval_cv until there are two gaps: what a buyer without rhythm shows
# What a customer the feature store knows nothing about (a brand-new customer) gets.
FEATURE_DEFAULTS: dict[str, float] = {
    **dict.fromkeys(ACTIVITY_FEATURES, 0.0),
    "days_since_last_order": NO_ORDER_DAYS,
    "purchase_interval_days": NO_ORDER_DAYS,
    "interval_cv": MEMORYLESS_CV,
    "recency_ratio": NO_ORDER_DAYS,
}
DAYS_PER_YEAR = 365.25
# What the feature table's snapshots were computed with; a snapshot computed with another definition
# is recomputed. Bump the revision when a formula changes without a column changing.
FEATURES_REVISION = 2
FEATURE_DEFINITION = f"{FEATURES_REVISION}:{','.join(SNAPSHOT_FEATURES)}"
# A known customer bought within this many days; lapsed customers are scored like new ones.
ACTIVE_WINDOW_DAYS = 365


def known_customers(frame: pd.DataFrame) -> pd.DataFrame:
    """Customers with recent purchase history (the active base) get batch scores; the real-time model
    serves everyone else. A fixed window keeps the population comparable from one date to the next."""
    return frame[frame["days_since_last_order"] <= ACTIVE_WINDOW_DAYS]


def new_customers(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that look like new customers to serving: no purchase within the active window (never
    bought, or lapsed). The real-time model's gate is judged on them."""
    return frame[~(frame["days_since_last_order"] <= ACTIVE_WINDOW_DAYS)]


def snapshot_dates(first: pd.Timestamp, last: pd.Timestamp, every_days: int) -> list[pd.Timestamp]:
    """Dates every `every_days` days ending exactly at `last` (the as-of date), none before `first`."""
    last = pd.Timestamp(last).normalize()
    dates = []
    current = last
    while current >= first:
        dates.append(current)
        current -= pd.Timedelta(days=every_days)
    return sorted(dates)


def _seconds(column: Column) -> Column:
    """Seconds since the epoch of a zone-less (UTC wall-clock) timestamp."""
    return column.cast("timestamp_ltz").cast("double")


def _days_between(later: Column, earlier: Column) -> Column:
    return (_seconds(later) - _seconds(earlier)) / 86_400


def _snapshot_frame(spark: SparkSession, dates: Sequence[pd.Timestamp]) -> DataFrame:
    rows = [(pd.Timestamp(d).normalize().to_pydatetime(),) for d in sorted(set(dates))]
    return spark.createDataFrame(rows, f"{EVENT_TIMESTAMP} timestamp_ntz")


def snapshot_population(customers: DataFrame, dates: Sequence[pd.Timestamp]) -> DataFrame:
    """(customer, t, signup_date) for every customer signed up before each snapshot date t."""
    snapshots = _snapshot_frame(customers.sparkSession, dates)
    return customers.select(ENTITY, "signup_date").join(
        sf.broadcast(snapshots), sf.col("signup_date") < sf.col(EVENT_TIMESTAMP)
    )


def daily_activity(transactions: DataFrame) -> DataFrame:
    """One row per (customer, day) with that day's orders, revenue, items and last purchase time:
    every feature is a sum or a maximum of these, so the snapshots never touch single purchases."""
    return transactions.groupBy(ENTITY, sf.to_date("timestamp").cast("timestamp_ntz").alias("day")).agg(
        sf.count(sf.lit(1)).alias("orders"),
        sf.sum("amount").alias("revenue"),
        sf.sum("items").alias("items"),
        sf.max("timestamp").alias("last_order"),
    )


def calendar_features(t: Column) -> list[Column]:
    """Day of the year on a circle, so that December 31 sits next to January 1."""
    angle = 2 * math.pi * sf.dayofyear(t) / DAYS_PER_YEAR
    return [sf.sin(angle).alias("season_sin"), sf.cos(angle).alias("season_cos")]


def snapshot_features(customers: DataFrame, transactions: DataFrame, dates: Sequence[pd.Timestamp]) -> DataFrame:
    """One row per (customer signed up before t, t) for every snapshot date t, with behaviour features
    from transactions strictly before t, all dates in one Spark job.

    Lifetime totals: each day's activity is added to the first requested snapshot after it, then
    running totals over the snapshots of each customer. The gaps between purchase days are summed the
    same way (count, sum, sum of squares), which gives their mean and spread. Windows (30, 90 and the
    90 before those): each day joins the few snapshots within 180 days after it. All linear in the
    data; no pass per date.
    """
    spark = customers.sparkSession
    snapshots = _snapshot_frame(spark, dates)
    t = sf.col(EVENT_TIMESTAMP)
    by_day = Window.partitionBy(ENTITY).orderBy("day")
    daily = daily_activity(transactions).withColumn("gap", sf.datediff("day", sf.lag("day").over(by_day)))
    ordered = sorted({pd.Timestamp(d).normalize().to_pydatetime() for d in dates})
    first_after = sf.try_element_at(
        sf.filter(sf.array(*[sf.lit(d).cast("timestamp_ntz") for d in ordered]), lambda x: x > sf.col("day")), sf.lit(1)
    )
    lifetime = (
        daily.withColumn(EVENT_TIMESTAMP, first_after)
        .where(t.isNotNull())
        .groupBy(ENTITY, EVENT_TIMESTAMP)
        .agg(
            sf.sum("orders").alias("orders"),
            sf.sum("revenue").alias("revenue"),
            sf.sum("items").alias("items"),
            sf.max("last_order").alias("last_order"),
            sf.min("day").alias("first_day"),
            sf.count(sf.lit(1)).alias("purchase_days"),
            sf.count("gap").alias("gaps"),
            sf.sum("gap").alias("gap_sum"),
            sf.sum(sf.col("gap") * sf.col("gap")).alias("gap_squares"),
        )
    )
    population = snapshot_population(customers, dates)
    running = Window.partitionBy(ENTITY).orderBy(EVENT_TIMESTAMP).rowsBetween(Window.unboundedPreceding, 0)
    totals = (
        population.withColumn("_in_population", sf.lit(True))
        .join(lifetime, [ENTITY, EVENT_TIMESTAMP], "full_outer")
        .select(
            ENTITY,
            EVENT_TIMESTAMP,
            "signup_date",
            "_in_population",
            sf.sum(sf.coalesce("orders", sf.lit(0))).over(running).alias("orders_total"),
            sf.sum(sf.coalesce("revenue", sf.lit(0.0))).over(running).alias("revenue_total"),
            sf.sum(sf.coalesce("items", sf.lit(0))).over(running).alias("items_total"),
            sf.max("last_order").over(running).alias("last_order"),
            sf.min("first_day").over(running).alias("first_day"),
            *[
                sf.sum(sf.coalesce(c, sf.lit(0))).over(running).cast("bigint").alias(f"{c}_total")
                for c in ("purchase_days", "gaps", "gap_sum", "gap_squares")
            ],
        )
        .where(sf.col("_in_population"))
    )
    window_days = sf.datediff(t, sf.col("day"))

    def in_window(column: str, low: int, high: int, zero: float) -> Column:
        return sf.sum(sf.when(window_days.between(low, high), sf.col(column)).otherwise(zero))

    recent = (
        daily.join(sf.broadcast(snapshots), (sf.col("day") < t) & (sf.col("day") >= sf.date_sub(t, 180)))
        .groupBy(ENTITY, EVENT_TIMESTAMP)
        .agg(
            in_window("orders", 1, 30, 0).alias("orders_30d"),
            in_window("orders", 1, 90, 0).alias("orders_90d"),
            in_window("orders", 91, 180, 0).alias("orders_prev_90d"),
            in_window("revenue", 1, 30, 0.0).alias("revenue_30d"),
            in_window("revenue", 1, 90, 0.0).alias("revenue_90d"),
        )
    )
    frame = totals.join(recent, [ENTITY, EVENT_TIMESTAMP], "left")
    orders_total = sf.col("orders_total").cast("bigint")
    days, gaps, gap_sum = sf.col("purchase_days_total"), sf.col("gaps_total"), sf.col("gap_sum_total")
    bought = days > 0
    days_since_last_order = sf.coalesce(_days_between(t, sf.col("last_order")), sf.lit(NO_ORDER_DAYS))
    interval = sf.when(bought, _days_between(t, sf.col("first_day")) / days).otherwise(NO_ORDER_DAYS)
    # Spread over mean of the gaps, from integer sums so that equal gaps give exactly 0:
    # sqrt(k * sum(g^2) - sum(g)^2) / sum(g).
    spread = sf.sqrt((gaps * sf.col("gap_squares_total") - gap_sum * gap_sum).cast("double")) / gap_sum
    return frame.select(
        ENTITY,
        EVENT_TIMESTAMP,
        _days_between(t, sf.col("signup_date")).alias("tenure_days"),
        orders_total.alias("orders_total"),
        sf.coalesce(sf.col("orders_30d"), sf.lit(0)).cast("bigint").alias("orders_30d"),
        sf.coalesce(sf.col("orders_90d"), sf.lit(0)).cast("bigint").alias("orders_90d"),
        sf.coalesce(sf.col("revenue_30d"), sf.lit(0.0)).cast("double").alias("revenue_30d"),
        sf.coalesce(sf.col("revenue_90d"), sf.lit(0.0)).cast("double").alias("revenue_90d"),
        sf.when(orders_total > 0, sf.col("revenue_total") / orders_total).otherwise(0.0).alias("avg_order_value"),
        sf.when(orders_total > 0, sf.col("items_total") / orders_total).otherwise(0.0).alias("avg_items"),
        days_since_last_order.alias("days_since_last_order"),
        sf.coalesce(sf.col("orders_prev_90d"), sf.lit(0)).cast("bigint").alias("orders_prev_90d"),
        interval.alias("purchase_interval_days"),
        sf.when(gaps >= 2, spread).otherwise(MEMORYLESS_CV).alias("interval_cv"),
        sf.when(bought, days_since_last_order / interval).otherwise(NO_ORDER_DAYS).alias("recency_ratio"),
        *calendar_features(t),
    )


def active_customers(customers: DataFrame, transactions: DataFrame, as_of: pd.Timestamp) -> DataFrame:
    """The customers batch scoring must score as of `as_of`, straight from the lake: signed up before
    it and bought within ACTIVE_WINDOW_DAYS before it (the same rule as `known_customers`)."""
    start = pd.Timestamp(as_of) - pd.Timedelta(days=ACTIVE_WINDOW_DAYS)
    buyers = (
        transactions.where(sf.col("timestamp") >= sf.lit(start.to_pydatetime()).cast("timestamp_ntz"))
        .where(sf.col("timestamp") < sf.lit(pd.Timestamp(as_of).to_pydatetime()).cast("timestamp_ntz"))
        .select(ENTITY)
        .distinct()
    )
    signed_up = customers.where(
        sf.col("signup_date") < sf.lit(pd.Timestamp(as_of).to_pydatetime()).cast("timestamp_ntz")
    )
    return signed_up.select(ENTITY).join(buyers, ENTITY, "left_semi")


def snapshot_labels(entities: DataFrame, transactions: DataFrame, horizon_days: int) -> DataFrame:
    """`entities` (customer_id, event_timestamp) with LABEL: 1 if the customer buys in [t, t + horizon)."""
    t = sf.col(EVENT_TIMESTAMP)
    purchase_days = transactions.select(ENTITY, sf.to_date("timestamp").cast("timestamp_ntz").alias("day")).distinct()
    bought = (
        entities.select(ENTITY, EVENT_TIMESTAMP)
        .join(purchase_days, ENTITY)
        .where((sf.col("day") >= t) & (sf.col("day") < sf.date_add(t, horizon_days)))
        .select(ENTITY, EVENT_TIMESTAMP)
        .distinct()
        .withColumn(LABEL, sf.lit(1))
    )
    return entities.join(bought, [ENTITY, EVENT_TIMESTAMP], "left").withColumn(
        LABEL, sf.coalesce(sf.col(LABEL), sf.lit(0)).cast("bigint")
    )


def customer_profiles(customers: pd.DataFrame) -> pd.DataFrame:
    """Static profile rows, valid from signup on."""
    return customers.rename(columns={"signup_date": EVENT_TIMESTAMP})[[ENTITY, EVENT_TIMESTAMP, *PROFILE_FEATURES]]


def training_snapshot_dates(
    as_of: pd.Timestamp, window_days: int, horizon_days: int, every_days: int
) -> list[pd.Timestamp]:
    """Snapshot dates of a training set: every label window closes by `as_of`."""
    last_labelled = pd.Timestamp(as_of).normalize() - pd.Timedelta(days=horizon_days)
    return snapshot_dates(last_labelled - pd.Timedelta(days=window_days), last_labelled, every_days)


def fill_missing_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Defaults for a customer the feature store knows nothing about (a brand-new customer)."""
    defaults: dict[str, object] = dict(FEATURE_DEFAULTS)
    defaults.update(dict.fromkeys(PROFILE_FEATURES, UNKNOWN))
    out = frame.copy()
    for column, value in defaults.items():
        if column in out.columns:
            filled = out[column].where(out[column].notna(), value)
            # A column that was all missing arrives as objects: give it the default's type.
            out[column] = filled.infer_objects() if filled.dtype == object else filled
    return out
