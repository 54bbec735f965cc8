"""Raw data in the lake: the data contract, bring-your-own validation and incremental ingest.

The lake holds two canonical tables, whatever produced the data (`propensity generate` or a user's
own files):

* `transactions` (transaction_id, customer_id, timestamp, amount, items): an Iceberg table
  partitioned by `date`. Ingest appends days; a day that is ingested again replaces that day, never
  duplicates it (one commit for the whole file).
* `customers` (customer_id, signup_date, country, channel): an Iceberg table; ingest upserts by
  customer id and replaces the table in one commit.

Customer ids are identifiers: they are read as strings exactly as written (`00042` stays `00042`).
What a row must be: ids of UTF-8 text without control characters, a timestamp from 1678 to 2261
(what pandas and Feast hold), a finite non-negative amount, and items (optional, empty for one) a
whole non-negative number. A CSV is UTF-8 RFC 4180 (commas; a quote in a quoted value doubled) and
every row has as many fields as its header.
Ingest validates a whole file with Spark before writing anything, so a large file is never held in
one process's memory, and a bad file leaves the lake as it was. The tables' metadata says when each
day last changed (`lake_changes`), so that feature snapshots computed before can be recomputed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as sf
from pyspark.sql.types import ArrayType, MapType, StructType

from propensity.catalog import table_name
from propensity.errors import PropensityError, shown
from propensity.features import UNKNOWN
from propensity.settings import Settings
from propensity.spark import set_log_level, spark_session
from propensity.tables import (
    current_snapshot,
    load_table,
    overwrite_partitions,
    partition_updates,
    read_snapshot,
    replace_table,
    snapshot_history,
)

CUSTOMER_COLUMNS = ["customer_id", "signup_date", "country", "channel"]
CUSTOMER_SCHEMA = "customer_id string, signup_date timestamp_ntz, country string, channel string"
TRANSACTION_COLUMNS = ["transaction_id", "customer_id", "timestamp", "amount", "items"]
DATE_PARTITION = "date"  # the transactions' partition: the day of `timestamp` as YYYY-MM-DD text
TRANSACTIONS, CUSTOMERS = "transactions", "customers"  # the lake's Iceberg tables
# Recorded by each customers commit: the signup days (old and new) of the customers it added or
# changed, comma-separated; from those days on, feature snapshots count them differently.
CHANGED_DAYS = "changed-days"
# Timestamps pandas and Feast can hold (nanoseconds since 1970 in 64 bits), with a margin for the
# day after the last transaction that pipelines default to.
FIRST_TIMESTAMP, END_TIMESTAMP = "1678-01-01", "2262-01-01"
# Identifiers with control characters or U+FFFD (what undecodable bytes are read as) come from a
# file that is not UTF-8 text (Latin-1, UTF-16, binary) or from a broken export.
UNREADABLE_TEXT = r"[\x00-\x1F\x7F\uFFFD]"


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


def _spark_failure(exc: BaseException) -> str:
    """The innermost cause of a failed Spark job as one line, without Java class names or stack frames."""
    causes = re.findall(r"(?m)^(?:Caused by: |: )?[\w.$]+(?:Exception|Error): (.+)$", str(exc))
    message = causes[-1] if causes else _first_line(exc)
    message = re.sub(r"\s*SQLSTATE: \w+", "", message)
    record = re.match(r"\[MALFORMED_CSV_RECORD\] Malformed CSV record: (.*)", message)
    if record:
        return (
            f"a row has more or fewer fields than the header (first: {shown(record.group(1))}); "
            "quote values that contain the delimiter or line breaks"
        )
    message = re.sub(r"^\[[A-Z_.]+\] ", "", message)
    message = re.sub(r"\b(?:[a-z]\w*\.)+[A-Z][\w$]*(?:: )?", "", message).strip()
    return (message if len(message) <= 300 else f"{message[:300]}...") or type(exc).__name__


def _sniff_csv(path: Path) -> None:
    """Reject what Spark would read as garbage columns rather than as text: UTF-16/32 or binary files."""
    with path.open("rb") as file:
        head = file.read(4096)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PropensityError(f"{path} is UTF-16 (or UTF-32) text; save it as UTF-8 CSV")
    if b"\x00" in head:
        raise PropensityError(f"{path} contains NUL bytes: it is not UTF-8 CSV text; save it as UTF-8 CSV")


def check_file(path: Path) -> None:
    """What can be told about an input file without Spark (so before a JVM starts)."""
    if not path.is_file():
        raise PropensityError(f"{path} does not exist; pass the path of a CSV or Parquet file")
    if path.suffix.lower() in {".csv", ".txt"}:
        _sniff_csv(path)
    elif path.suffix.lower() not in {".parquet", ".pq"}:
        raise PropensityError(f"{path} has suffix '{path.suffix}'; use a .csv or .parquet file")


def read_file(spark: SparkSession, path: Path) -> DataFrame:
    """A CSV (every column as text, exactly as written) or Parquet file, chosen by its suffix."""
    check_file(path)
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return _read_parquet(spark, path)
        return _read_csv(spark, path)
    except (PySparkException, Py4JJavaError) as exc:
        raise PropensityError(f"{path} could not be read: {_spark_failure(exc)}") from exc


def _read_csv(spark: SparkSession, path: Path) -> DataFrame:
    """RFC 4180 CSV, as spreadsheets and pandas write it: a quote inside a quoted value is doubled
    (Spark's default escape is a backslash, which would keep `""` in the value). Every row must have
    as many fields as the header (FAILFAST): a row with more is what an unquoted delimiter in a value
    (`1,5` for 1.5) or a quoted line break leaves, and is never guessed at. Spark checks that only
    over the columns a query reads unless CSV column pruning is off."""
    spark.conf.set("spark.sql.csv.parser.columnPruning.enabled", "false")
    frame = (
        spark.read.option("header", True)
        .option("inferSchema", False)
        .option("escape", '"')
        .option("mode", "FAILFAST")
        .csv(str(path))
    )
    if len(frame.columns) == 1:
        delimiter = next((d for d in (";", "\t", "|") if d in frame.columns[0]), None)
        if delimiter is not None:
            raise PropensityError(
                f"{path} has a single column {shown(frame.columns[0])}: its values are separated by "
                f"{delimiter!r}; save it with commas as the delimiter"
            )
    return frame


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
        found = ", ".join(shown(c, 40) for c in frame.columns[:20]) + (", ..." if len(frame.columns) > 20 else "")
        raise PropensityError(
            f"{what} is missing column(s) {', '.join(missing)} (found: {found or 'none'}); "
            "rename them or set the PROPENSITY_*_COLUMN settings"
        )


def _require_flat(frame: DataFrame, columns: list[str], what: str) -> None:
    """Values are text, numbers or timestamps: a nested column would pass as its text (`{1, 2}`)."""
    for field in frame.schema.fields:
        if field.name in columns and isinstance(field.dataType, (ArrayType, MapType, StructType)):
            raise PropensityError(
                f"{what} has column {field.name} of type {field.dataType.simpleString()[:60]}; "
                "use text, numbers or timestamps"
            )


def _as_id(column: Column) -> Column:
    """An identifier as text; blank counts as missing."""
    text = sf.trim(column.cast("string"))
    return sf.when(text != "", text)


def _as_timestamp(column: Column) -> Column:
    """ISO 8601 text or a timestamp, as UTC wall-clock time without a zone (null when unparsable).
    Parsed as an instant (the session's zone is UTC): text with an offset (`...T23:30:00-02:00`) is
    moved to UTC, where a zone-less parse would drop the offset."""
    return column.cast("string").try_cast("timestamp_ltz").cast("timestamp_ntz")


def _out_of_range(timestamp: Column) -> Column:
    return (timestamp < sf.lit(FIRST_TIMESTAMP).cast("timestamp_ntz")) | (
        timestamp >= sf.lit(END_TIMESTAMP).cast("timestamp_ntz")
    )


def _as_count(text: Column) -> Column:
    """A whole number (`3`, `3.0`) as a bigint; null when it is not one."""
    number = text.try_cast("double")
    return sf.when(number % 1 == 0, number.try_cast("bigint"))


def normalize_transactions(raw: DataFrame, settings: Settings) -> DataFrame:
    """The canonical transactions columns from a user's file, plus `_bad_*` flags for validation."""
    _require_columns(
        raw, [settings.customer_id_column, settings.timestamp_column, settings.amount_column], "the transactions file"
    )
    _require_flat(
        raw,
        ["transaction_id", settings.customer_id_column, settings.timestamp_column, settings.amount_column, "items"],
        "the transactions file",
    )
    ts_raw = sf.col(settings.timestamp_column).cast("string")
    amount_raw = sf.col(settings.amount_column).cast("string")
    items_raw = _as_id(sf.col("items")) if "items" in raw.columns else sf.lit(None).cast("string")
    items = _as_count(items_raw)
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
        items_raw.alias("_items_raw"),
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


def transaction_row_rules() -> dict[str, tuple[Column, Column]]:
    """The rules one row of `normalize_transactions` can break: name -> (broken, the value to show).
    A null `broken` counts as kept (the rule before it is the one broken)."""
    unreadable_id = sf.when(sf.col("customer_id").rlike(UNREADABLE_TEXT), sf.col("customer_id")).when(
        sf.col("transaction_id").rlike(UNREADABLE_TEXT), sf.col("transaction_id")
    )
    bad_amount = sf.col("amount").isNull() | sf.isnan("amount") | (sf.abs("amount") == float("inf"))
    bad_items = sf.col("_items_raw").isNotNull() & (_as_count(sf.col("_items_raw")).isNull() | (sf.col("items") < 0))
    return {
        "empty_ids": (sf.col("customer_id").isNull(), sf.lit(None)),
        "unreadable": (unreadable_id.isNotNull(), unreadable_id),
        "bad_ts": (sf.col("timestamp").isNull(), sf.col("_timestamp_raw")),
        "early_or_late": (_out_of_range(sf.col("timestamp")), sf.col("_timestamp_raw")),
        "bad_amount": (bad_amount, sf.col("_amount_raw")),
        "negative": (sf.col("amount") < 0, sf.col("amount")),
        "bad_items": (bad_items, sf.col("_items_raw")),
        "empty_tx_ids": (sf.col("transaction_id").isNull(), sf.lit(None)),
    }


def _validate_transactions(tx: DataFrame, settings: Settings) -> None:
    """Every rule over the whole file in one Spark pass; the first broken rule is the error."""
    rules = transaction_row_rules()
    stats = tx.agg(
        sf.count(sf.lit(1)).alias("rows"),
        *[sf.count_if(broken).alias(name) for name, (broken, _) in rules.items()],
        *[
            sf.first(sf.when(broken, shown), ignorenulls=True).alias(f"{name}_example")
            for name, (broken, shown) in rules.items()
        ],
    ).first()
    assert stats is not None
    id_col, ts_col, amount_col = settings.customer_id_column, settings.timestamp_column, settings.amount_column
    if stats["rows"] == 0:
        raise PropensityError("the transactions file has no rows; nothing to ingest")
    if stats["empty_ids"]:
        raise PropensityError(f"the transactions file has {stats['empty_ids']} empty {id_col} value(s)")
    if stats["unreadable"]:
        raise PropensityError(
            f"the transactions file has {stats['unreadable']} {id_col} or transaction_id value(s) with control "
            f"characters or undecodable bytes (first: {shown(stats['unreadable_example'])}); save it as UTF-8"
        )
    if stats["bad_ts"]:
        raise PropensityError(
            f"column {ts_col}: {stats['bad_ts']} value(s) are not parsable timestamps "
            f"(first: {shown(stats['bad_ts_example'])}); use ISO 8601 such as 2025-03-01T12:00:00"
        )
    if stats["early_or_late"]:
        raise PropensityError(
            f"column {ts_col}: {stats['early_or_late']} value(s) are before {FIRST_TIMESTAMP} or from "
            f"{END_TIMESTAMP} on (first: {shown(stats['early_or_late_example'])}); check the dates"
        )
    if stats["bad_amount"]:
        raise PropensityError(
            f"column {amount_col} has non-numeric, infinite or empty values "
            f"(first: {shown(stats['bad_amount_example'])})"
        )
    if stats["negative"]:
        raise PropensityError(
            f"column {amount_col} has {stats['negative']} negative amount(s) (first: {stats['negative_example']}); "
            "remove refunds or net them out before ingesting"
        )
    if stats["bad_items"]:
        raise PropensityError(
            f"column items has {stats['bad_items']} value(s) that are not non-negative whole numbers "
            f"(first: {shown(stats['bad_items_example'])}); leave it empty for one item"
        )
    if stats["empty_tx_ids"]:
        raise PropensityError(f"the transactions file has {stats['empty_tx_ids']} empty transaction_id value(s)")
    duplicate = tx.groupBy("transaction_id").count().where(sf.col("count") > 1).first()
    if duplicate is not None:
        raise PropensityError(
            f"transaction_id {shown(duplicate['transaction_id'])} appears {duplicate['count']} times in the "
            "transactions file; ids must be unique"
        )


def _validate_against_lake(spark: SparkSession, settings: Settings, tx: DataFrame) -> None:
    """Transaction ids stay unique in the lake: an id already there may come again only on a day
    this file replaces."""
    if not transaction_days(settings):
        return
    file_days = tx.select(sf.to_date("timestamp").cast("string").alias("day")).distinct()
    kept = (
        read_transactions(spark, settings)
        .select("transaction_id", sf.col(DATE_PARTITION).cast("string").alias("day"))
        .join(file_days, "day", "left_anti")
    )
    clash = kept.join(tx.select("transaction_id"), "transaction_id", "left_semi").first()
    if clash is not None:
        raise PropensityError(
            f"transaction_id {shown(clash['transaction_id'])} is already in the lake on {clash['day']}, a day "
            "this file does not replace; ids must be unique"
        )


def normalize_customers(raw: DataFrame, settings: Settings) -> DataFrame:
    """The canonical customer columns from a user's file (signup_date may be null: filled later)."""
    _require_columns(raw, [settings.customer_id_column], "the customers file")
    _require_flat(raw, [settings.customer_id_column, "signup_date", "country", "channel"], "the customers file")

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
    unreadable = sf.col("customer_id").rlike(UNREADABLE_TEXT) | sf.col("country").rlike(UNREADABLE_TEXT)
    unreadable |= sf.col("channel").rlike(UNREADABLE_TEXT)
    early_or_late = _out_of_range(sf.col("signup_date"))
    stats = customers.agg(
        sf.count(sf.lit(1)).alias("rows"),
        sf.count_if(sf.col("customer_id").isNull()).alias("empty_ids"),
        sf.count_if(unreadable).alias("unreadable"),
        sf.first(sf.when(unreadable, sf.concat_ws(" / ", "customer_id", "country", "channel")), ignorenulls=True).alias(
            "unreadable_example"
        ),
        sf.count_if(early_or_late).alias("early_or_late"),
        sf.first(sf.when(early_or_late, sf.col("_signup_raw")), ignorenulls=True).alias("early_or_late_example"),
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
    if stats["unreadable"]:
        raise PropensityError(
            f"the customers file has {stats['unreadable']} value(s) with control characters or undecodable "
            f"bytes (first: {shown(stats['unreadable_example'])}); save it as UTF-8"
        )
    if stats["bad_signup"]:
        raise PropensityError(
            f"column signup_date: {stats['bad_signup']} value(s) are not parsable timestamps "
            f"(first: {shown(stats['bad_signup_example'])}); use ISO 8601 such as 2025-03-01"
        )
    if stats["early_or_late"]:
        raise PropensityError(
            f"column signup_date: {stats['early_or_late']} value(s) are before {FIRST_TIMESTAMP} or from "
            f"{END_TIMESTAMP} on (first: {shown(stats['early_or_late_example'])}); check the dates"
        )
    duplicate = customers.groupBy("customer_id").count().where(sf.col("count") > 1).first()
    if duplicate is not None:
        raise PropensityError(f"the customers file lists customer {shown(duplicate['customer_id'])} more than once")


# ---------------------------------------------------------------------------------------------------
# Reading the lake


def require_lake(settings: Settings) -> None:
    """A one-line error unless the transactions table has rows: from its current snapshot's summary,
    one metadata file, where listing the days reads every manifest."""
    table = load_table(settings, TRANSACTIONS)
    snapshot = table.current_snapshot() if table is not None else None
    if snapshot is None or snapshot.summary is None or int(snapshot.summary["total-records"] or 0) == 0:
        raise PropensityError(
            "no data in the lake yet; run `propensity generate --out DIR` and `propensity ingest`, or `propensity demo`"
        )


def transaction_days(settings: Settings) -> list[str]:
    """The days the lake holds transactions for (ISO dates, sorted); from the table's metadata."""
    return list(partition_updates(settings, TRANSACTIONS, DATE_PARTITION))


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
    return spark.table(table_name(settings, TRANSACTIONS))


def read_customers(spark: SparkSession, settings: Settings) -> DataFrame:
    """The customers table, read lazily by Spark."""
    require_lake(settings)
    if load_table(settings, CUSTOMERS) is None:
        raise PropensityError("no customers table in the lake; ingest data first")
    return spark.table(table_name(settings, CUSTOMERS))


def lake_changes(settings: Settings) -> dict[str, str]:
    """For every day whose data changed, when it last changed (UTC ISO): what feature snapshots after
    that day were computed from may be out of date. From the tables' metadata: each transactions
    day's last commit, and the signup days each customers commit changed (as far back as the
    table keeps its commits)."""
    updates = partition_updates(settings, TRANSACTIONS, DATE_PARTITION)
    changes = {day: committed_at for day, (_, committed_at) in updates.items()}
    for commit in snapshot_history(settings, CUSTOMERS):
        for day in filter(None, commit.properties.get(CHANGED_DAYS, "").split(",")):
            changes[day] = max(changes.get(day, ""), commit.committed_at)
    return dict(sorted(changes.items()))


# ---------------------------------------------------------------------------------------------------
# Ingest


def _merge_customers(
    spark: SparkSession, settings: Settings, tx: DataFrame, file_customers: DataFrame | None
) -> tuple[DataFrame, DataFrame, int | None]:
    """(the new customers table, the rows that are new or changed, the customers snapshot they were
    merged with): existing customers, updated by the customers file, plus every customer the
    transactions name that neither knows."""
    base = current_snapshot(settings, CUSTOMERS)
    existing = read_snapshot(spark, settings, base) if base is not None else None
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
                f"customer {shown(unknown['customer_id'])} appears in the transactions but neither in the customers "
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
    return merged, changed, (base.snapshot_id if base is not None else None)


@contextmanager
def _quiet_task_failures(spark: SparkSession) -> Iterator[None]:
    """A malformed file fails Spark tasks, which Spark logs (Java stack traces on stderr); while the
    files are validated, that failure is reported as the one-line error instead."""
    set_log_level(spark, "OFF")
    try:
        yield
    finally:
        set_log_level(spark, "ERROR")  # as spark_session sets it


def ingest(settings: Settings, transactions_file: Path, customers_file: Path | None = None) -> IngestResult:
    """Validate the user's files completely, then write the lake: the days in the file replace those
    days, customers are upserted. On any error nothing is written."""
    for path in (transactions_file, customers_file):
        if path is not None:
            check_file(path)  # a wrong path or encoding is told before Spark starts
    spark = spark_session(settings, "propensity-ingest")
    tx = None
    file_customers = None
    try:
        # Spark reads lazily: a file's content (a malformed row, a corrupt Parquet page) fails the first
        # job that reads it, which is then reported as the file's problem, in one line.
        with _quiet_task_failures(spark):
            tx = normalize_transactions(read_file(spark, transactions_file), settings).persist()
            _validate_transactions(tx, settings)
            _validate_against_lake(spark, settings, tx)
            if customers_file is not None:
                file_customers = normalize_customers(read_file(spark, customers_file), settings).persist()
                _validate_customers(file_customers, settings)
        customers, changed, base = _merge_customers(spark, settings, tx, file_customers)
        return _write_lake(settings, tx.select(*TRANSACTION_COLUMNS), customers, changed, base)
    except (PySparkException, Py4JJavaError) as exc:
        inputs = " or ".join(str(f) for f in (transactions_file, customers_file) if f is not None)
        raise PropensityError(f"{inputs} could not be ingested: {_spark_failure(exc)}") from exc
    finally:
        if tx is not None:
            tx.unpersist()
        if file_customers is not None:
            file_customers.unpersist()


def _write_lake(
    settings: Settings, tx: DataFrame, customers: DataFrame, changed: DataFrame, base: int | None
) -> IngestResult:
    """Commit the customers table, then the file's days of transactions, each in one commit. A run
    killed between the two leaves customers that no transaction names yet, which nothing counts
    before their signup, and its rerun commits the same rows again."""
    # A customer's signup date decides from which snapshot on they count: both old and new dates change.
    # Collected before anything is written: it compares with the customers table as it was.
    signup_day = sf.to_date(sf.least("signup_date", sf.coalesce("_previous_signup", "signup_date")))
    changed_by_day = changed.groupBy(signup_day.alias("day")).count().collect()
    changed_days = sorted(str(row["day"]) for row in changed_by_day)
    # Based on the snapshot the merge read: an ingest that committed customers meanwhile fails ours
    # in one line (its rerun merges with them), instead of our commit dropping its new customers.
    properties = {CHANGED_DAYS: ",".join(changed_days)}
    replace_table(
        customers.orderBy("customer_id"), settings, CUSTOMERS, properties, read_modify_write=True, based_on=base
    )
    by_day = tx.withColumn(DATE_PARTITION, sf.to_date("timestamp").cast("string"))
    days = sorted(str(row[DATE_PARTITION]) for row in by_day.select(DATE_PARTITION).distinct().collect())
    overwrite_partitions(by_day, settings, TRANSACTIONS, DATE_PARTITION)
    return IngestResult(
        transactions=tx.count(),
        days=len(days),
        first_day=days[0],
        last_day=days[-1],
        customers_total=tx.sparkSession.table(table_name(settings, CUSTOMERS)).count(),
        customers_changed=sum(int(row["count"]) for row in changed_by_day),
    )
