"""The data gate before training: Great Expectations suites over the data a run learns from.

Four suites, each on data as it is (nothing has been filled yet):

* `transactions`: the lake's raw transactions before the as-of date (Spark): completeness, unique
  ids, non-negative amounts and items, and freshness (the newest purchase is recent enough for the
  as-of date);
* `feature_table`: the offline feature table's snapshots of the training window (Spark): one row per
  (customer, snapshot), no nulls, ranges, windows nested (30 days <= 90 days <= lifetime), and the
  newest snapshot is the as-of date;
* `snapshot_coverage`: for each snapshot, the feature table's row count against the lake's customers
  signed up before it;
* `training_set`: the rows the models will see (pandas: the set is capped by `training_max_rows`):
  columns, uniqueness, no null feature (a failed point-in-time join shows up here), ranges, label
  values and rate, the row count against the labelled rows in the lake, and the newest labelled
  snapshot present.

The result is rendered as Great Expectations Data Docs pages in one HTML report; a failure stops the run.
"""

from __future__ import annotations

import functools
import html
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from propensity import features as F
from propensity.catalog import table_name
from propensity.feature_table import FEATURE_SNAPSHOTS, SNAPSHOT_PARTITION, feature_dates
from propensity.lake import read_customers, read_transactions
from propensity.settings import Settings
from propensity.spark import spark_session
from propensity.training_set import TrainingSetInfo, read_training_set

MIN_ROWS = 500
LABEL_RATE = (0.01, 0.95)  # outside this band the labels or the join are broken, not the market
FRESHNESS_DAYS = 7  # the newest purchase may be this much older than the as-of date
SAMPLING_TOLERANCE = 0.1  # a capped training set is a Bernoulli sample: its size varies this much
TRANSACTION_COLUMNS = ["transaction_id", F.ENTITY, "timestamp", "amount", "items"]

e = gx.expectations


@dataclass(frozen=True)
class SuiteResult:
    name: str
    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)
    html: str = ""


@dataclass(frozen=True)
class ValidationResult:
    suites: list[SuiteResult]

    @property
    def success(self) -> bool:
        return all(s.success for s in self.suites)

    @property
    def failed(self) -> list[str]:
        return [f"{s.name}: {name}" for s in self.suites for name in s.failed]

    def markdown(self) -> str:
        verdict = "PASSED" if self.success else "FAILED"
        lines = [f"# Data validation: {verdict}", "", "| suite | expectations | failed |", "|---|---|---|"]
        lines += [f"| {s.name} | {s.evaluated} | {len(s.failed)} |" for s in self.suites]
        if self.failed:
            lines += ["", "Failed expectations:", *[f"- {name}" for name in self.failed]]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """One page: the summary, then each suite's Data Docs page (inline, so the KFP UI shows it whole)."""
        rows = "".join(
            f"<tr><td>{html.escape(s.name)}</td><td>{'passed' if s.success else 'FAILED'}</td>"
            f"<td>{s.evaluated}</td><td>{html.escape('; '.join(s.failed))}</td></tr>"
            for s in self.suites
        )
        pages = "".join(
            f'<h2>{html.escape(s.name)}</h2><iframe style="width:100%;height:900px;border:1px solid #ccc" '
            f'srcdoc="{html.escape(s.html, quote=True)}"></iframe>'
            for s in self.suites
        )
        verdict = "passed" if self.success else "FAILED"
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>Data validation: {verdict}</title></head>"
            f"<body><h1>Data validation: {verdict}</h1><table border='1' cellpadding='4'>"
            f"<tr><th>suite</th><th>result</th><th>expectations</th><th>failed</th></tr>{rows}</table>"
            f"{pages}</body></html>"
        )


def expectation_id(config: Any) -> str:
    """An expectation's name in reports: its type and the column it checks, if any."""
    kwargs = config.kwargs
    column = kwargs.get("column") or kwargs.get("column_A") or ""
    return f"{config.type} {column}".strip()


@functools.cache
def _context() -> Any:
    """One in-memory context per process (each one makes a temporary docs folder)."""
    return gx.get_context(mode="ephemeral")


def _suite(name: str, expectations: Iterable[gx.expectations.Expectation]) -> gx.ExpectationSuite:
    _context()  # a suite belongs to the current context: make sure there is one
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _not_null(columns: Iterable[str]) -> list[gx.expectations.Expectation]:
    return [e.ExpectColumnValuesToNotBeNull(column=c) for c in columns]


def _non_negative(columns: Iterable[str]) -> list[gx.expectations.Expectation]:
    return [e.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in columns]


def _calendar() -> list[gx.expectations.Expectation]:
    return [e.ExpectColumnValuesToBeBetween(column=c, min_value=-1, max_value=1) for c in F.CALENDAR_FEATURES]


def _nested_windows() -> list[gx.expectations.Expectation]:
    """Features are computed strictly before the snapshot: a 30-day window never exceeds the 90-day one."""
    pair = e.ExpectColumnPairValuesAToBeGreaterThanB
    return [
        pair(column_A="orders_90d", column_B="orders_30d", or_equal=True),
        pair(column_A="orders_total", column_B="orders_90d", or_equal=True),
        pair(column_A="revenue_90d", column_B="revenue_30d", or_equal=True),
    ]


def transactions_suite(as_of: pd.Timestamp) -> gx.ExpectationSuite:
    return _suite(
        "transactions",
        [
            e.ExpectTableRowCountToBeBetween(min_value=1),
            *_not_null(TRANSACTION_COLUMNS),
            e.ExpectColumnValuesToBeUnique(column="transaction_id"),
            *_non_negative(["amount", "items"]),
            e.ExpectColumnMaxToBeBetween(
                column="timestamp", min_value=(as_of - pd.Timedelta(days=FRESHNESS_DAYS)).to_pydatetime()
            ),
        ],
    )


def feature_table_suite(as_of: pd.Timestamp) -> gx.ExpectationSuite:
    return _suite(
        "feature_table",
        [
            e.ExpectCompoundColumnsToBeUnique(column_list=[F.ENTITY, F.EVENT_TIMESTAMP]),
            *_not_null([F.ENTITY, F.EVENT_TIMESTAMP, *F.SNAPSHOT_FEATURES]),
            *_non_negative(F.ACTIVITY_FEATURES),
            *_calendar(),
            *_nested_windows(),
            e.ExpectColumnMaxToBeBetween(
                column=F.EVENT_TIMESTAMP, min_value=as_of.to_pydatetime(), max_value=as_of.to_pydatetime()
            ),
        ],
    )


def coverage_suite() -> gx.ExpectationSuite:
    return _suite(
        "snapshot_coverage",
        [
            e.ExpectTableRowCountToBeBetween(min_value=1),
            e.ExpectColumnPairValuesToBeEqual(column_A="feature_rows", column_B="lake_customers"),
        ],
    )


def training_set_suite(info: TrainingSetInfo, max_rows: int) -> gx.ExpectationSuite:
    """What a usable training set looks like; each expectation names a real failure seen in practice."""
    features = F.BATCH_MODEL_FEATURES
    size: gx.expectations.Expectation
    if info.rows_before_cap <= max_rows:  # every labelled row in the lake reached the set, once
        size = e.ExpectTableRowCountToEqual(value=info.rows_before_cap)
    else:
        size = e.ExpectTableRowCountToBeBetween(
            min_value=int(max_rows * (1 - SAMPLING_TOLERANCE)), max_value=int(max_rows * (1 + SAMPLING_TOLERANCE))
        )
    return _suite(
        "training_set",
        [
            e.ExpectTableRowCountToBeBetween(min_value=MIN_ROWS),
            size,
            e.ExpectTableColumnsToMatchSet(column_set=[F.ENTITY, F.EVENT_TIMESTAMP, F.LABEL, *features]),
            e.ExpectCompoundColumnsToBeUnique(column_list=[F.ENTITY, F.EVENT_TIMESTAMP]),
            *_not_null([F.ENTITY, F.EVENT_TIMESTAMP, F.LABEL, *features]),
            e.ExpectColumnValuesToBeInSet(column=F.LABEL, value_set=[0, 1]),
            e.ExpectColumnMeanToBeBetween(column=F.LABEL, min_value=LABEL_RATE[0], max_value=LABEL_RATE[1]),
            *_non_negative(F.ACTIVITY_FEATURES),
            *_calendar(),
            *_nested_windows(),
            e.ExpectColumnMaxToBeBetween(
                column=F.EVENT_TIMESTAMP, min_value=pd.Timestamp(info.last_snapshot).to_pydatetime()
            ),
        ],
    )


def run_suite(data: pd.DataFrame | DataFrame, suite: gx.ExpectationSuite) -> SuiteResult:
    """Validate a pandas or Spark frame (Spark computes the metrics where the data lives)."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    sources = _context().data_sources
    name = f"{suite.name}-{uuid.uuid4().hex[:8]}"
    source: Any = sources.add_pandas(name) if isinstance(data, pd.DataFrame) else sources.add_spark(name)
    batch = (
        source.add_dataframe_asset(suite.name)
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": data})
    )
    try:
        result = batch.validate(suite)
    finally:
        sources.delete(name)
        if not isinstance(data, pd.DataFrame):
            data.unpersist()  # GE caches the frame for its metrics; a later read must see the files again
    failed = [expectation_id(r.expectation_config) for r in result.results if not r.success and r.expectation_config]
    for r in result.results:  # GE's renderer repr()s numbers: numpy 2 scalars print as "np.float64(...)"
        observed = r.result.get("observed_value")
        if isinstance(observed, np.generic):
            r.result["observed_value"] = observed.item()
    page = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    return SuiteResult(suite.name, bool(result.success), len(result.results), failed, page)


def validate_training_set(frame: pd.DataFrame, info: TrainingSetInfo, max_rows: int) -> SuiteResult:
    return run_suite(frame, training_set_suite(info, max_rows))


def snapshot_coverage(
    spark: SparkSession, settings: Settings, table: DataFrame, dates: list[pd.Timestamp]
) -> pd.DataFrame:
    """Per expected snapshot (one row each, a small frame): the feature table's rows and the lake's
    customers signed up before it."""
    expected = F.snapshot_population(read_customers(spark, settings), dates).groupBy(F.EVENT_TIMESTAMP).count()
    found = table.groupBy(F.EVENT_TIMESTAMP).count()
    snapshots = spark.createDataFrame([(d.to_pydatetime(),) for d in dates], f"{F.EVENT_TIMESTAMP} timestamp_ntz")
    return (
        snapshots.join(expected.withColumnRenamed("count", "lake_customers"), F.EVENT_TIMESTAMP, "left")
        .join(found.withColumnRenamed("count", "feature_rows"), F.EVENT_TIMESTAMP, "left")
        .fillna(0, subset=["lake_customers", "feature_rows"])
        .orderBy(F.EVENT_TIMESTAMP)
        .toPandas()
    )


def validate_data(settings: Settings, training_set: Path) -> ValidationResult:
    """Run every suite on the data behind a training set (its lineage says which window and dates)."""
    frame, info = read_training_set(training_set)
    settings = settings.with_values(
        training_window_days=info.training_window_days, label_horizon_days=info.label_horizon_days
    )
    as_of = pd.Timestamp(info.as_of_date)
    dates = feature_dates(settings, as_of)
    spark = spark_session(settings, "propensity-validation")
    transactions = read_transactions(spark, settings).where(
        sf.col("timestamp") < sf.lit(as_of.to_pydatetime()).cast("timestamp_ntz")
    )
    keys = [str(d.date()) for d in dates]
    table = (
        spark.table(table_name(settings, FEATURE_SNAPSHOTS))
        .where(sf.col(SNAPSHOT_PARTITION).cast("string").isin(keys))
        .drop(SNAPSHOT_PARTITION)
    )
    return ValidationResult(
        [
            run_suite(transactions.select(*TRANSACTION_COLUMNS), transactions_suite(as_of)),
            run_suite(table, feature_table_suite(as_of)),
            run_suite(snapshot_coverage(spark, settings, table, dates), coverage_suite()),
            validate_training_set(frame, info, settings.training_max_rows),
        ]
    )
