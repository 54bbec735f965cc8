"""Data validation with teeth: every expectation of every suite is made to fail by a test, the Spark
engine computes the same verdicts where the data lives, and a bad lake stops the run with a report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from components import validation as V
from propensity import features as F
from propensity.settings import Settings
from tests.test_training_logic import _frame, info_for

AS_OF = pd.Timestamp("2025-04-01")
Mutation = Callable[[pd.DataFrame], pd.DataFrame]


def transactions() -> pd.DataFrame:
    n = 40
    return pd.DataFrame(
        {
            "transaction_id": [f"t-{i}" for i in range(n)],
            F.ENTITY: [f"c-{i % 7}" for i in range(n)],
            "timestamp": pd.date_range(AS_OF - pd.Timedelta(days=n), periods=n, freq="D"),
            "amount": np.linspace(5.0, 90.0, n),
            "items": np.arange(n) % 4 + 1,
        }
    )


def feature_table() -> pd.DataFrame:
    frame = _frame(n_dates=6, per_date=30).drop(columns=[F.LABEL, *F.PROFILE_FEATURES])
    shift = AS_OF - frame[F.EVENT_TIMESTAMP].max()  # the newest snapshot is the as-of date
    return frame.assign(**{F.EVENT_TIMESTAMP: frame[F.EVENT_TIMESTAMP] + shift})


def coverage() -> pd.DataFrame:
    return pd.DataFrame({F.EVENT_TIMESTAMP: [AS_OF], "feature_rows": [30], "lake_customers": [30]})


TRAINING = _frame(n_dates=12, per_date=80)
INFO = info_for(TRAINING)
SUITES: dict[str, tuple[Callable[[], object], Callable[[], pd.DataFrame]]] = {
    "transactions": (lambda: V.transactions_suite(AS_OF), transactions),
    "feature_table": (lambda: V.feature_table_suite(AS_OF), feature_table),
    "snapshot_coverage": (V.coverage_suite, coverage),
    "training_set": (lambda: V.training_set_suite(INFO, max_rows=100_000), TRAINING.copy),
}


def set_value(column: str, value: object, row: int = 0) -> Mutation:
    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        if value is None and frame[column].dtype.kind in "iub":
            frame[column] = frame[column].astype("float64" if frame[column].dtype.kind != "M" else object)
        frame.loc[row, column] = value
        return frame

    return mutate


def not_null_cases(suite: str, columns: list[str]) -> list[tuple[str, str, Mutation]]:
    return [(suite, f"expect_column_values_to_not_be_null {c}", set_value(c, None)) for c in columns]


def non_negative_cases(suite: str, columns: list[str]) -> list[tuple[str, str, Mutation]]:
    return [(suite, f"expect_column_values_to_be_between {c}", set_value(c, -1)) for c in columns]


def calendar_cases(suite: str) -> list[tuple[str, str, Mutation]]:
    return [(suite, f"expect_column_values_to_be_between {c}", set_value(c, 1.5)) for c in F.CALENDAR_FEATURES]


def swapped(a: str, b: str) -> Mutation:
    """Make column b exceed column a in one row (a window wider than the one that contains it)."""

    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[0, b] = frame.loc[0, a] + 1
        return frame

    return mutate


def duplicate_first_row(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.head(1)], ignore_index=True)


def pairs(suite: str) -> list[tuple[str, str, Mutation]]:
    pair = "expect_column_pair_values_a_to_be_greater_than_b"
    return [
        (suite, f"{pair} orders_90d", swapped("orders_90d", "orders_30d")),
        (suite, f"{pair} orders_total", swapped("orders_total", "orders_90d")),
        (suite, f"{pair} revenue_90d", swapped("revenue_90d", "revenue_30d")),
    ]


CASES: list[tuple[str, str, Mutation]] = [
    ("transactions", "expect_table_row_count_to_be_between", lambda f: f.head(0)),
    *not_null_cases("transactions", V.TRANSACTION_COLUMNS),
    ("transactions", "expect_column_values_to_be_unique transaction_id", set_value("transaction_id", "t-1")),
    *non_negative_cases("transactions", ["amount", "items"]),
    (  # stale: the newest purchase is two weeks before the as-of date
        "transactions",
        "expect_column_max_to_be_between timestamp",
        lambda f: f.assign(timestamp=f["timestamp"] - pd.Timedelta(days=14)),
    ),
    ("feature_table", "expect_compound_columns_to_be_unique", duplicate_first_row),
    *not_null_cases("feature_table", [F.ENTITY, F.EVENT_TIMESTAMP, *F.SNAPSHOT_FEATURES]),
    *non_negative_cases("feature_table", F.ACTIVITY_FEATURES),
    *calendar_cases("feature_table"),
    *pairs("feature_table"),
    (  # the as-of snapshot is missing
        "feature_table",
        f"expect_column_max_to_be_between {F.EVENT_TIMESTAMP}",
        lambda f: f[f[F.EVENT_TIMESTAMP] < AS_OF].reset_index(drop=True),
    ),
    ("snapshot_coverage", "expect_table_row_count_to_be_between", lambda f: f.head(0)),
    ("snapshot_coverage", "expect_column_pair_values_to_be_equal feature_rows", set_value("feature_rows", 29)),
    ("training_set", "expect_table_row_count_to_be_between", lambda f: f.head(V.MIN_ROWS - 1)),
    ("training_set", "expect_table_row_count_to_equal", lambda f: f.iloc[1:].reset_index(drop=True)),
    ("training_set", "expect_table_columns_to_match_set", lambda f: f.assign(extra=1)),
    ("training_set", "expect_compound_columns_to_be_unique", duplicate_first_row),
    *not_null_cases("training_set", [F.ENTITY, F.EVENT_TIMESTAMP, F.LABEL, *F.BATCH_MODEL_FEATURES]),
    ("training_set", f"expect_column_values_to_be_in_set {F.LABEL}", set_value(F.LABEL, 2)),
    ("training_set", f"expect_column_mean_to_be_between {F.LABEL}", lambda f: f.assign(**{F.LABEL: 0})),
    *non_negative_cases("training_set", F.ACTIVITY_FEATURES),
    *calendar_cases("training_set"),
    *pairs("training_set"),
    (  # the newest labelled snapshot did not make it into the set
        "training_set",
        f"expect_column_max_to_be_between {F.EVENT_TIMESTAMP}",
        lambda f: f[f[F.EVENT_TIMESTAMP] < f[F.EVENT_TIMESTAMP].max()].reset_index(drop=True),
    ),
]


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_good_data_passes_every_suite(suite: str) -> None:
    build, good = SUITES[suite]
    result = V.run_suite(good(), build())  # type: ignore[arg-type]
    assert result.success, result.failed
    assert "<html" in result.html.lower()


@pytest.mark.slow
@pytest.mark.parametrize(("suite", "expectation", "mutate"), CASES, ids=[f"{s}:{e}" for s, e, _ in CASES])
def test_each_expectation_fails_on_the_data_it_guards_against(suite: str, expectation: str, mutate: Mutation) -> None:
    build, good = SUITES[suite]
    result = V.run_suite(mutate(good()), build())  # type: ignore[arg-type]
    assert not result.success and expectation in result.failed, result.failed


def test_every_expectation_has_a_failing_case() -> None:
    covered = {(suite, expectation) for suite, expectation, _ in CASES}
    for name, (build, _) in SUITES.items():
        suite = build()
        for expectation in suite.expectations:  # type: ignore[attr-defined]
            assert (name, V.expectation_id(expectation.configuration)) in covered


def test_a_capped_training_set_is_checked_against_the_sample_size() -> None:
    capped = dataclasses.replace(INFO, rows_before_cap=10 * len(TRAINING))
    fits = V.run_suite(TRAINING, V.training_set_suite(capped, max_rows=len(TRAINING) + 20))
    assert fits.success, fits.failed
    too_small = V.run_suite(TRAINING, V.training_set_suite(capped, max_rows=2 * len(TRAINING)))
    assert "expect_table_row_count_to_be_between" in too_small.failed


@pytest.mark.slow
def test_spark_computes_the_same_verdicts(spark: SparkSession) -> None:
    """The lake-side suites run on Spark DataFrames: a good table passes, a broken one fails the
    same expectations as in pandas."""
    good = spark.createDataFrame(feature_table())
    assert V.run_suite(good, V.feature_table_suite(AS_OF)).success
    broken = duplicate_first_row(set_value("orders_30d", None)(swapped("orders_90d", "orders_30d")(feature_table())))
    result = V.run_suite(spark.createDataFrame(broken.drop(index=1)), V.feature_table_suite(AS_OF))
    assert set(result.failed) >= {
        "expect_compound_columns_to_be_unique",
        "expect_column_values_to_not_be_null orders_30d",
    }
    stale = transactions().assign(timestamp=lambda f: f["timestamp"] - pd.Timedelta(days=14), amount=-1.0)
    result = V.run_suite(spark.createDataFrame(stale), V.transactions_suite(AS_OF))
    assert set(result.failed) == {
        "expect_column_max_to_be_between timestamp",
        "expect_column_values_to_be_between amount",
    }


def test_the_data_behind_a_training_set_is_validated_and_a_broken_table_stops_the_run(
    lake: Settings, tmp_path: Path
) -> None:
    from components.features import build_training_set, materialize_features
    from propensity.catalog import table_name
    from propensity.feature_table import FEATURE_SNAPSHOTS, SNAPSHOT_PARTITION
    from propensity.spark import spark_session

    materialize_features(lake)
    path = tmp_path / "training.parquet"
    info = build_training_set(lake, path)
    result = V.validate_data(lake, path)
    assert result.success, result.failed
    assert [s.name for s in result.suites] == ["transactions", "feature_table", "snapshot_coverage", "training_set"]
    page = result.html()
    assert "Data validation: passed" in page and page.count("<iframe") == 4

    # A snapshot of the window loses customers (a bad write by hand): the coverage check sees it.
    spark = spark_session(lake, "test")
    spark.sql(
        f"DELETE FROM {table_name(lake, FEATURE_SNAPSHOTS)} WHERE {SNAPSHOT_PARTITION} = '{info.first_snapshot}' "
        "AND hash(customer_id) % 2 = 0"
    )
    broken = V.validate_data(lake, path)
    assert not broken.success
    assert broken.failed == ["snapshot_coverage: expect_column_pair_values_to_be_equal feature_rows"]
    assert "Data validation: FAILED" in broken.html() and "FAILED" in broken.markdown()
