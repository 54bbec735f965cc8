"""The Iceberg catalog's configuration: one database URL, read by Spark (JDBC) and Python alike."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from propensity.catalog import catalog_name, catalog_url, jdbc, spark_catalog_conf, table_name
from propensity.errors import PropensityError
from propensity.settings import get_settings

# Starts Spark: left out by `make test-fast`.
pytestmark = pytest.mark.slow


def test_the_embedded_catalog_is_a_sqlite_file_beside_the_tables(tmp_path: Path) -> None:
    settings = get_settings(home=tmp_path)
    assert catalog_url(settings) == f"sqlite:///{tmp_path / 'catalog.db'}"
    conf = spark_catalog_conf(settings)
    prefix = f"spark.sql.catalog.{catalog_name(settings)}"
    assert conf[prefix] == "org.apache.iceberg.spark.SparkCatalog"
    assert conf[f"{prefix}.type"] == "jdbc"
    assert conf[f"{prefix}.uri"] == f"jdbc:sqlite:{tmp_path / 'catalog.db'}"
    assert conf[f"{prefix}.warehouse"] == (tmp_path / "warehouse").as_uri()
    assert table_name(settings, "latest_scores") == f"{catalog_name(settings)}.propensity.latest_scores"
    assert catalog_name(get_settings(home=tmp_path / "other")) != catalog_name(settings)


def test_a_postgresql_catalog_keeps_its_password_out_of_the_url() -> None:
    uri, credentials = jdbc("postgresql+psycopg://ml:s%40cret@db.internal:5433/platform?sslmode=require")
    assert uri == "jdbc:postgresql://db.internal:5433/platform?sslmode=require"
    assert credentials == {"jdbc.user": "ml", "jdbc.password": "s@cret"}  # pragma: allowlist secret


def test_a_relative_sqlite_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert jdbc("sqlite:///catalog.db") == (f"jdbc:sqlite:{tmp_path / 'catalog.db'}", {})


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_a_catalog_needs_a_database_that_outlives_the_process(url: str) -> None:
    with pytest.raises(PropensityError, match="needs a SQLite file"):
        jdbc(url)


def test_the_catalog_setting_is_a_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROPENSITY_CATALOG", "mysql://host/db")
    with pytest.raises(ValueError, match=r"(?s)catalog.*sqlite:///path or postgresql\+psycopg://"):
        get_settings()


def test_spark_writes_an_iceberg_table_that_pyiceberg_reads(tmp_path: Path) -> None:
    """The project's Spark session carries the format and the catalog: a partitioned table is
    created, a partition replaced in one commit, the first snapshot read back (time travel), and
    Python reads the same catalog without a JVM."""
    from propensity.catalog import NAMESPACE, python_catalog
    from propensity.spark import spark_session

    settings = get_settings(home=tmp_path, spark_shuffle_partitions=2)
    spark = spark_session(settings, "propensity-tests")
    name = table_name(settings, "scores")
    schema = "customer_id string, score double, score_date string"
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {catalog_name(settings)}.{NAMESPACE}")
    spark.createDataFrame([("a", 0.1, "2026-01-01"), ("b", 0.2, "2026-01-02")], schema).writeTo(name).partitionedBy(
        "score_date"
    ).create()
    spark.createDataFrame([("a", 0.9, "2026-01-01")], schema).writeTo(name).overwritePartitions()

    assert sorted((r.customer_id, r.score) for r in spark.table(name).collect()) == [("a", 0.9), ("b", 0.2)]
    snapshots = spark.sql(f"SELECT snapshot_id, operation FROM {name}.snapshots ORDER BY committed_at").collect()
    assert [s.operation for s in snapshots] == ["append", "overwrite"]
    first = snapshots[0].snapshot_id
    assert sorted(r.score for r in spark.sql(f"SELECT score FROM {name} VERSION AS OF {first}").collect()) == [0.1, 0.2]

    table = python_catalog(settings).load_table(f"{NAMESPACE}.scores")
    assert sorted(table.scan().to_arrow().column("score").to_pylist()) == [0.2, 0.9]
    assert [s.snapshot_id for s in table.snapshots()] == [s.snapshot_id for s in snapshots]
    assert (tmp_path / "warehouse").is_dir() and (tmp_path / "catalog.db").is_file()


def test_overwrite_where_empties_a_value_that_comes_out_empty_and_keeps_the_others(tmp_path: Path) -> None:
    """Dates recomputed together replace their rows in one commit, including a date whose new result
    has no rows (overwritePartitions would keep its old ones); the commits' properties are the
    table's history, and a partition read is pinned to one snapshot."""
    from propensity.spark import spark_session
    from propensity.tables import (
        TableSnapshot,
        current_snapshot,
        overwrite_where,
        partition_updates,
        read_snapshot,
        scan_batches,
        snapshot_history,
    )

    settings = get_settings(home=tmp_path, spark_shuffle_partitions=2)
    spark = spark_session(settings, "propensity-tests")
    schema = "customer_id string, value double, day string"
    first = spark.createDataFrame([("a", 1.0, "d1"), ("b", 2.0, "d2"), ("c", 3.0, "d3")], schema)
    overwrite_where(first, settings, "t", "day", ["d1", "d2", "d3"], {"run": "1"})
    pinned = current_snapshot(settings, "t")
    assert pinned is not None
    overwrite_where(spark.createDataFrame([("a", 9.0, "d1")], schema), settings, "t", "day", ["d1", "d2"], {"run": "2"})

    rows = sorted((r.customer_id, r.value, r.day) for r in spark.table(table_name(settings, "t")).collect())
    assert rows == [("a", 9.0, "d1"), ("c", 3.0, "d3")]
    assert list(partition_updates(settings, "t", "day")) == ["d1", "d3"]
    # The table is created empty first (no fanout on its first write), then the two commits.
    assert [s.properties.get("run") for s in snapshot_history(settings, "t")] == [None, "1", "2"]
    d2 = TableSnapshot("t", pinned.snapshot_id, {}, ("day", "d2"))
    assert [r.customer_id for r in read_snapshot(spark, settings, d2).collect()] == ["b"]
    batches = scan_batches(settings, "t", 10, None, d2.snapshot_id, d2.partition)
    assert [list(batch["customer_id"]) for batch in batches] == [["b"]]

    # A commit by another writer (here PyIceberg) is seen by the session's next query, not 30 s later.
    import pyarrow as pa

    from propensity.catalog import NAMESPACE, python_catalog

    table = python_catalog(settings).load_table(f"{NAMESPACE}.t")
    table.append(pa.Table.from_pylist([{"customer_id": "d", "value": 4.0, "day": "d4"}], table.schema().as_arrow()))
    assert spark.table(table_name(settings, "t")).count() == 3


def test_a_write_with_a_new_column_adds_it_to_a_table_an_older_release_made(tmp_path: Path) -> None:
    """A release that writes one more column (as the historic scores' `feature_snapshot_id`) writes to
    the existing table: the column is added, older rows read it as null, their files untouched."""
    from propensity.spark import spark_session
    from propensity.tables import current_snapshot, overwrite_partitions, replace_table

    settings = get_settings(home=tmp_path, spark_shuffle_partitions=2)
    spark = spark_session(settings, "propensity-tests")
    old = spark.createDataFrame([("a", 1.0, "d1")], "customer_id string, score double, day string")
    overwrite_partitions(old, settings, "scores", "day")
    new = spark.createDataFrame([("b", 2.0, 7, "d2")], "customer_id string, score double, snapshot bigint, day string")
    overwrite_partitions(new, settings, "scores", "day")
    rows = spark.table(table_name(settings, "scores")).orderBy("day").collect()
    assert [r.asDict() for r in rows] == [
        {"customer_id": "a", "score": 1.0, "day": "d1", "snapshot": None},
        {"customer_id": "b", "score": 2.0, "day": "d2", "snapshot": 7},
    ]
    # The same for a read-modify-write replace (the customers table).
    replace_table(old.drop("day"), settings, "people", read_modify_write=True)
    base = current_snapshot(settings, "people")
    assert base is not None
    replace_table(new.drop("day"), settings, "people", read_modify_write=True, based_on=base.snapshot_id)
    assert spark.table(table_name(settings, "people")).columns == ["customer_id", "score", "snapshot"]


def test_two_first_writes_at_once_both_find_the_namespace(tmp_path: Path) -> None:
    """Iceberg's JDBC catalog checks for a namespace and then inserts it: two writers creating it at
    once once broke the catalog database's key (a concurrent ingest failed in CI). Each round is a
    new catalog whose namespace two threads create together; without the retry some rounds fail
    (3 in 40 here)."""
    from propensity.spark import spark_session
    from propensity.tables import create_namespace

    errors: list[str] = []
    for round_ in range(40):
        settings = get_settings(home=tmp_path / str(round_), spark_shuffle_partitions=2)
        spark = spark_session(settings, "propensity-tests")

        def create(spark: Any = spark, settings: Any = settings) -> None:
            try:
                create_namespace(spark, settings)
            except Exception as error:  # the test reports whatever a writer raised
                errors.append(str(error).splitlines()[0])

        threads = [threading.Thread(target=create) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_maintenance_expires_old_snapshots_and_deletes_a_killed_writers_files(tmp_path: Path) -> None:
    """Snapshots older than the cutoff go with the files only they referenced; the current one
    stays whole; a data file no snapshot references (a writer killed before its commit) is deleted
    once older than three days, and a fresh one (a write that may still be running) is kept."""
    import os
    import time
    from datetime import UTC, datetime, timedelta

    from pyspark.errors import PySparkException

    from propensity.spark import spark_session
    from propensity.tables import current_snapshot, maintain_table, overwrite_partitions, snapshot_history

    settings = get_settings(home=tmp_path, spark_shuffle_partitions=2)
    spark = spark_session(settings, "propensity-tests")
    schema = "customer_id string, value double, day string"
    for run in range(3):  # each run replaces d1
        frame = spark.createDataFrame([("a", float(run), "d1"), ("b", 1.0, f"d{run + 2}")], schema)
        overwrite_partitions(frame, settings, "t", "day")
    first = snapshot_history(settings, "t")[1]
    data = tmp_path / "warehouse" / "propensity" / "t" / "data"
    old_orphan, new_orphan = data / "day=d1" / "killed-old.parquet", data / "day=d1" / "killed-new.parquet"
    for orphan in (old_orphan, new_orphan):
        orphan.write_bytes(b"PAR1")
    four_days_ago = time.time() - 4 * 86400
    os.utime(old_orphan, (four_days_ago, four_days_ago))
    current = current_snapshot(settings, "t")
    rows = sorted(map(tuple, spark.table(table_name(settings, "t")).collect()))

    done = maintain_table(spark, settings, "t", datetime.now(UTC) + timedelta(seconds=1))

    assert done.snapshots_kept == 1 and current_snapshot(settings, "t") == current
    assert done.files_expired >= 2  # the two replaced d1 files, and manifests
    assert done.orphan_files == 1 and not old_orphan.exists() and new_orphan.exists()
    assert sorted(map(tuple, spark.table(table_name(settings, "t")).collect())) == rows
    with pytest.raises(PySparkException):  # time travel ends at the cutoff
        spark.sql(f"SELECT * FROM {table_name(settings, 't')} VERSION AS OF {first.snapshot_id}").collect()


def test_a_commit_a_concurrent_writer_defeated_is_one_line_and_other_errors_pass_through() -> None:
    """What Spark raises when Iceberg gave up reconciling our commit with another writer's."""
    from pyspark.errors import PySparkException

    from propensity.tables import _commit

    def conflicting() -> None:
        raise PySparkException(
            message="An error occurred while calling o136.overwritePartitions.\n"
            ": org.apache.iceberg.exceptions.CommitFailedException: Table metadata refresh is required\n"
            "\tat org.apache.iceberg.BaseTransaction.commit(BaseTransaction.java:1)"
        )

    with pytest.raises(PropensityError) as error:
        _commit("historic_scores", conflicting)
    message = str(error.value)
    assert "\n" not in message and "historic_scores" in message and "run it again" in message
    assert "Table metadata refresh is required" in message

    def broken() -> None:
        raise PySparkException(message="something else")

    with pytest.raises(PySparkException):
        _commit("historic_scores", broken)


def test_a_catalog_database_that_is_not_there_is_one_line_naming_it_and_nothing_is_written(tmp_path: Path) -> None:
    """Readers and writers alike, before Spark starts; the password is not shown."""
    from propensity.catalog import prepare_catalog
    from propensity.ports import free_port
    from propensity.tables import load_table

    port = free_port()
    settings = get_settings(home=tmp_path, catalog=f"postgresql+psycopg://ml:s3cret@127.0.0.1:{port}/catalog")
    for call in (lambda: load_table(settings, "transactions"), lambda: prepare_catalog(settings)):
        with pytest.raises(PropensityError) as error:
            call()
        message = str(error.value)
        assert message.startswith(f"cannot reach the Iceberg catalog at postgresql+psycopg://ml:***@127.0.0.1:{port}/")
        assert "\n" not in message and "s3cret" not in message and "refused" in message, message
    assert not any(tmp_path.rglob("*.parquet"))
