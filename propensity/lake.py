"""Raw data in the lake: the data contract, bring-your-own validation and incremental ingest.

The lake holds two canonical tables, whatever produced the data (`propensity generate` or a user's
own files):

* `transactions` (transaction_id, customer_id, timestamp, amount, items): Parquet partitioned by
  `date`. Ingest appends days; a day that is ingested again replaces that day, never duplicates it.
* `customers` (customer_id, signup_date, country, channel): a versioned table (see
  `propensity.tables`); ingest upserts by customer id and switches the version atomically.

Customer ids are identifiers: they are read as strings exactly as written (`00042` stays `00042`).
Ingest validates a whole file with Spark before writing anything, so a large file is never held in
one process's memory, and a bad file leaves the lake as it was. The days each ingest touched are
recorded (`_changes.json`) so that feature snapshots computed before can be recomputed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as sf

from propensity.errors import PropensityError
from propensity.features import UNKNOWN
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.tables import (
    current_version,
    new_version,
    partition_values,
    read_manifest,
    replace_partitions,
    staging_dir,
    switch_version,
    write_manifest,
)

CUSTOMER_COLUMNS = ["customer_id", "signup_date", "country", "channel"]
CUSTOMER_SCHEMA = "customer_id string, signup_date timestamp_ntz, country string, channel string"
TRANSACTION_COLUMNS = ["transaction_id", "customer_id", "timestamp", "amount", "items"]
DATE_PARTITION = "date"
CHANGES_FILE = "_changes.json"


@dataclass(frozen=True)
class IngestResult:
    transactions: int
    days: int
    first_day: str
    last_day: str
    customers_total: int
    customers_changed: int


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_file(spark: SparkSession, path: Path) -> DataFrame:
    """A CSV (every column as text, exactly as written) or Parquet file, chosen by its suffix."""
    if not path.is_file():
        raise PropensityError(f"{path} does not exist; pass the path of a CSV or Parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            return _read_parquet(spark, path)
        if suffix in {".csv", ".txt"}:
            return spark.read.option("header", True).option("inferSchema", False).csv(str(path))
    except PySparkException as exc:
        raise PropensityError(f"{path} could not be read: {_first_line(exc)}") from exc
    raise PropensityError(f"{path} has suffix '{path.suffix}'; use a .csv or .parquet file")


def _read_parquet(spark: SparkSession, path: Path) -> DataFrame:
    """Spark reads nanosecond timestamps (what pandas writes) as integers; turn them back into times."""
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError) as exc:
        raise PropensityError(f"{path} could not be read: {_first_line(exc)}") from exc
    nanos = [f.name for f in schema if pa.types.is_timestamp(f.type) and f.type.unit == "ns"]
    frame = spark.read.parquet(str(path))
    for name in nanos:
        frame = frame.withColumn(name, sf.timestamp_micros(sf.floor(sf.col(name) / 1000)).cast("timestamp_ntz"))
    return frame


def _require_columns(frame: DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise PropensityError(
            f"{what} is missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns)}); "
            "rename them or set the PROPENSITY_*_COLUMN settings"
        )


def _as_id(column: Column) -> Column:
    """An identifier as text; blank counts as missing."""
    text = sf.trim(column.cast("string"))
    return sf.when(text != "", text)


def _as_timestamp(column: Column) -> Column:
    """ISO 8601 text or a timestamp, as UTC wall-clock time without a zone (null when unparsable)."""
    return column.cast("string").try_cast("timestamp").cast("timestamp_ntz")


def normalize_transactions(raw: DataFrame, settings: Settings) -> DataFrame:
    """The canonical transactions columns from a user's file, plus `_bad_*` flags for validation."""
    _require_columns(
        raw, [settings.customer_id_column, settings.timestamp_column, settings.amount_column], "the transactions file"
    )
    ts_raw = sf.col(settings.timestamp_column).cast("string")
    amount_raw = sf.col(settings.amount_column).cast("string")
    items = sf.col("items").try_cast("bigint") if "items" in raw.columns else sf.lit(None).cast("bigint")
    tx = raw.select(
        _as_id(sf.col("transaction_id")).alias("transaction_id")
        if "transaction_id" in raw.columns
        else sf.lit(None).cast("string").alias("transaction_id"),
        _as_id(sf.col(settings.customer_id_column)).alias("customer_id"),
        _as_timestamp(sf.col(settings.timestamp_column)).alias("timestamp"),
        amount_raw.try_cast("double").alias("amount"),
        sf.coalesce(items, sf.lit(1)).alias("items"),
        ts_raw.alias("_timestamp_raw"),
        amount_raw.alias("_amount_raw"),
    )
    if "transaction_id" not in raw.columns:
        # Deterministic ids from the content, so re-ingesting the same file gives the same ids;
        # identical purchases are told apart by their occurrence number.
        content = [tx["customer_id"], tx["_timestamp_raw"], tx["_amount_raw"], tx["items"].cast("string")]
        occurrence = sf.row_number().over(Window.partitionBy(*content).orderBy(*content))
        tx = tx.withColumn(
            "transaction_id",
            sf.concat(sf.lit("t-"), sf.sha2(sf.concat_ws("|", *content, occurrence.cast("string")), 256).substr(1, 24)),
        )
    return tx


def _validate_transactions(tx: DataFrame, settings: Settings) -> None:
    """Every rule over the whole file in one Spark pass; the first broken rule is the error."""
    bad_ts = sf.col("timestamp").isNull()
    bad_amount = sf.col("amount").isNull()
    negative = sf.col("amount") < 0
    stats = tx.agg(
        sf.count(sf.lit(1)).alias("rows"),
        sf.count_if(sf.col("customer_id").isNull()).alias("empty_ids"),
        sf.count_if(bad_ts).alias("bad_ts"),
        sf.first(sf.when(bad_ts, sf.col("_timestamp_raw")), ignorenulls=True).alias("bad_ts_example"),
        sf.count_if(bad_amount).alias("bad_amount"),
        sf.first(sf.when(bad_amount, sf.col("_amount_raw")), ignorenulls=True).alias("bad_amount_example"),
        sf.count_if(negative).alias("negative"),
        sf.first(sf.when(negative, sf.col("amount")), ignorenulls=True).alias("negative_example"),
        sf.count_if(sf.col("transaction_id").isNull()).alias("empty_tx_ids"),
    ).first()
    assert stats is not None
    id_col, ts_col, amount_col = settings.customer_id_column, settings.timestamp_column, settings.amount_column
    if stats["rows"] == 0:
        raise PropensityError("the transactions file has no rows; nothing to ingest")
    if stats["empty_ids"]:
        raise PropensityError(f"the transactions file has {stats['empty_ids']} empty {id_col} value(s)")
    if stats["bad_ts"]:
        raise PropensityError(
            f"column {ts_col}: {stats['bad_ts']} value(s) are not parsable timestamps "
            f"(first: {stats['bad_ts_example']!r}); use ISO 8601 such as 2025-03-01T12:00:00"
        )
    if stats["bad_amount"]:
        raise PropensityError(
            f"column {amount_col} has non-numeric or empty values (first: {stats['bad_amount_example']!r})"
        )
    if stats["negative"]:
        raise PropensityError(
            f"column {amount_col} has {stats['negative']} negative amount(s) (first: {stats['negative_example']}); "
            "remove refunds or net them out before ingesting"
        )
    if stats["empty_tx_ids"]:
        raise PropensityError(f"the transactions file has {stats['empty_tx_ids']} empty transaction_id value(s)")
    duplicate = tx.groupBy("transaction_id").count().where(sf.col("count") > 1).first()
    if duplicate is not None:
        raise PropensityError(
            f"transaction_id {duplicate['transaction_id']!r} appears {duplicate['count']} times in the "
            "transactions file; ids must be unique"
        )


def normalize_customers(raw: DataFrame, settings: Settings) -> DataFrame:
    """The canonical customer columns from a user's file (signup_date may be null: filled later)."""
    _require_columns(raw, [settings.customer_id_column], "the customers file")

    def text(column: str) -> Column:
        if column not in raw.columns:
            return sf.lit(UNKNOWN)
        return sf.coalesce(_as_id(sf.col(column)), sf.lit(UNKNOWN))

    signup_raw = sf.col("signup_date").cast("string") if "signup_date" in raw.columns else sf.lit(None)
    return raw.select(
        _as_id(sf.col(settings.customer_id_column)).alias("customer_id"),
        _as_timestamp(signup_raw).alias("signup_date"),
        text("country").alias("country"),
        text("channel").alias("channel"),
        signup_raw.cast("string").alias("_signup_raw"),
    )


def _validate_customers(customers: DataFrame, settings: Settings) -> None:
    stats = customers.agg(
        sf.count(sf.lit(1)).alias("rows"),
        sf.count_if(sf.col("customer_id").isNull()).alias("empty_ids"),
        sf.count_if(sf.col("signup_date").isNull() & sf.col("_signup_raw").isNotNull()).alias("bad_signup"),
        sf.first(
            sf.when(sf.col("signup_date").isNull() & sf.col("_signup_raw").isNotNull(), sf.col("_signup_raw")),
            ignorenulls=True,
        ).alias("bad_signup_example"),
    ).first()
    assert stats is not None
    if stats["rows"] == 0:
        raise PropensityError("the customers file has no rows; leave it out to derive customers from transactions")
    if stats["empty_ids"]:
        raise PropensityError(
            f"the customers file has {stats['empty_ids']} empty {settings.customer_id_column} value(s)"
        )
    if stats["bad_signup"]:
        raise PropensityError(
            f"column signup_date: {stats['bad_signup']} value(s) are not parsable timestamps "
            f"(first: {stats['bad_signup_example']!r}); use ISO 8601 such as 2025-03-01"
        )
    duplicate = customers.groupBy("customer_id").count().where(sf.col("count") > 1).first()
    if duplicate is not None:
        raise PropensityError(f"the customers file lists customer {duplicate['customer_id']!r} more than once")


# ---------------------------------------------------------------------------------------------------
# Reading the lake


def require_lake(settings: Settings) -> None:
    if not partition_values(settings.transactions_path, DATE_PARTITION):
        raise PropensityError(
            f"no data in {settings.lake_dir}; run `propensity generate --out DIR` and `propensity ingest`, "
            "or `propensity demo`"
        )


def transaction_days(settings: Settings) -> list[str]:
    """The days the lake holds transactions for (ISO dates, sorted); read from the layout alone."""
    return partition_values(settings.transactions_path, DATE_PARTITION)


def last_data_date(settings: Settings) -> pd.Timestamp:
    """The day after the last transaction: the default `as_of_date` / `score_date` of every pipeline."""
    require_lake(settings)
    return pd.Timestamp(transaction_days(settings)[-1]) + pd.Timedelta(days=1)


def resolve_date(settings: Settings, value: str | None) -> pd.Timestamp:
    """A pipeline date parameter: an ISO date, or empty for the day after the last transaction."""
    if value:
        try:
            return pd.Timestamp(value).normalize()
        except ValueError as exc:
            raise ValueError(f"'{value}' is not a date; use YYYY-MM-DD") from exc
    return last_data_date(settings)


def first_data_date(settings: Settings) -> pd.Timestamp:
    require_lake(settings)
    return pd.Timestamp(transaction_days(settings)[0])


def read_transactions(spark: SparkSession, settings: Settings) -> DataFrame:
    """The transactions table (with its `date` partition column), read lazily by Spark."""
    require_lake(settings)
    return spark.read.parquet(str(settings.transactions_path))


def read_customers(spark: SparkSession, settings: Settings) -> DataFrame:
    """The current version of the customers table, read lazily by Spark."""
    require_lake(settings)
    current = current_version(settings.customers_path)
    if current is None:
        raise PropensityError(f"no customers table in {settings.lake_dir}; ingest data first")
    return spark.read.parquet(str(current))


def lake_changes(settings: Settings) -> dict[str, str]:
    """For every day whose data changed, when it last changed (UTC ISO): what feature snapshots after
    that day were computed from may be out of date."""
    return dict(read_manifest(settings.lake_dir / CHANGES_FILE).get("days", {}))


# ---------------------------------------------------------------------------------------------------
# Ingest


def _merge_customers(
    spark: SparkSession, settings: Settings, tx: DataFrame, file_customers: DataFrame | None
) -> tuple[DataFrame, DataFrame]:
    """(the new customers table, the rows that are new or changed): existing customers, updated by
    the customers file, plus every customer the transactions name that neither knows."""
    current = current_version(settings.customers_path)
    existing = spark.read.parquet(str(current)) if current is not None else None
    first_purchase = tx.groupBy("customer_id").agg(sf.min("timestamp").alias("_first_purchase"))
    if file_customers is not None:
        incoming = file_customers.drop("_signup_raw")
    else:
        incoming = spark.createDataFrame(
            [], "customer_id string, signup_date timestamp_ntz, country string, channel string"
        )
    known_ids = incoming.select("customer_id")
    if existing is not None:
        known_ids = known_ids.unionByName(existing.select("customer_id"))
    if file_customers is not None:
        unknown = tx.select("customer_id").distinct().join(known_ids.distinct(), "customer_id", "left_anti").first()
        if unknown is not None:
            raise PropensityError(
                f"customer {unknown['customer_id']!r} appears in the transactions but neither in the customers "
                "file nor in the lake; add it to the customers file"
            )
    # Customers only the transactions know: signed up at their first purchase, segment unknown.
    derived = first_purchase.join(known_ids.distinct(), "customer_id", "left_anti").select(
        "customer_id",
        sf.col("_first_purchase").alias("signup_date"),
        sf.lit(UNKNOWN).alias("country"),
        sf.lit(UNKNOWN).alias("channel"),
    )
    incoming = incoming.unionByName(derived)
    if existing is not None:
        previous = existing.select("customer_id", sf.col("signup_date").alias("_previous_signup"))
        incoming = incoming.join(previous, "customer_id", "left")
    else:
        incoming = incoming.withColumn("_previous_signup", sf.lit(None).cast("timestamp_ntz"))
    # A missing signup date falls back to what the lake knew, then to the first purchase in this file.
    incoming = (
        incoming.join(first_purchase, "customer_id", "left")
        .withColumn("signup_date", sf.coalesce("signup_date", "_previous_signup", "_first_purchase"))
        .where(sf.col("signup_date").isNotNull())  # neither a signup nor a purchase: cannot be placed in time
    )
    changed = incoming.where(
        sf.col("_previous_signup").isNull() | (sf.col("_previous_signup") != sf.col("signup_date"))
    ).select("customer_id", "signup_date", "_previous_signup")
    merged = incoming.select(*CUSTOMER_COLUMNS)
    if existing is not None:
        merged = existing.select(*CUSTOMER_COLUMNS).join(incoming.select("customer_id"), "customer_id", "left_anti")
        merged = merged.unionByName(incoming.select(*CUSTOMER_COLUMNS))
    return merged, changed


def ingest(settings: Settings, transactions_file: Path, customers_file: Path | None = None) -> IngestResult:
    """Validate the user's files completely, then write the lake: the days in the file replace those
    days, customers are upserted. On any error nothing is written."""
    spark = spark_session(settings, "propensity-ingest")
    tx = normalize_transactions(read_file(spark, transactions_file), settings).persist()
    file_customers = None
    try:
        _validate_transactions(tx, settings)
        if customers_file is not None:
            file_customers = normalize_customers(read_file(spark, customers_file), settings).persist()
            _validate_customers(file_customers, settings)
        customers, changed = _merge_customers(spark, settings, tx, file_customers)
        return _write_lake(settings, tx.select(*TRANSACTION_COLUMNS), customers, changed)
    finally:
        tx.unpersist()
        if file_customers is not None:
            file_customers.unpersist()


def _write_lake(settings: Settings, tx: DataFrame, customers: DataFrame, changed: DataFrame) -> IngestResult:
    """Stage everything, then commit: transaction days replaced whole, customers switched, changes recorded."""
    lake = settings.lake_dir
    lake.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(settings.transactions_path)
    version = new_version()
    try:
        # One task per day: each day partition is written as one file, whatever the input's layout.
        (
            tx.withColumn(DATE_PARTITION, sf.to_date("timestamp").cast("string"))
            .repartition(DATE_PARTITION)
            .sortWithinPartitions("timestamp", "customer_id")
            .write.partitionBy(DATE_PARTITION)
            .parquet(str(staged))
        )
        customers.orderBy("customer_id").write.parquet(str(settings.customers_path / version))
        # A customer's signup date decides from which snapshot on they count: both old and new dates change.
        changed_by_day = (
            changed.groupBy(
                sf.to_date(sf.least("signup_date", sf.coalesce("_previous_signup", "signup_date"))).alias("day")
            )
            .count()
            .collect()
        )
        changed_days = {str(row["day"]) for row in changed_by_day}
        changed_count = sum(int(row["count"]) for row in changed_by_day)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(settings.customers_path / version, ignore_errors=True)
        raise
    days = replace_partitions(staged, settings.transactions_path, DATE_PARTITION)
    switch_version(settings.customers_path, version)
    now = datetime.now(UTC).isoformat()
    changes = lake_changes(settings)
    changes.update(dict.fromkeys([*days, *changed_days], now))
    write_manifest(lake / CHANGES_FILE, {"days": changes})
    return IngestResult(
        transactions=tx.count(),
        days=len(days),
        first_day=days[0],
        last_day=days[-1],
        customers_total=tx.sparkSession.read.parquet(str(settings.customers_path / version)).count(),
        customers_changed=changed_count,
    )
