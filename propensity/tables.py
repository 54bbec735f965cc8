"""The pipeline's tables: Apache Iceberg tables in one catalog (propensity.catalog), written by
Spark. Commits, snapshots, concurrent writers and old-file cleanup belong to the format
(docs/decisions.md, Tables); these are the few ways the pipeline writes and reads them:

* writes: a partition replaced by value (`overwrite_partitions`, `overwrite_where`) or the whole
  table replaced (`replace_table`), each one commit that can record lineage in its snapshot summary;
* reads: through Spark, pinned to one snapshot (`read_snapshot`), or from Python without a JVM
  (`scan_batches`, and the metadata: `partitions`, `snapshot_history`, `current_snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from propensity.catalog import NAMESPACE, catalog_exists, catalog_name, prepare_catalog, python_catalog, table_name
from propensity.errors import PropensityError
from propensity.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.table import Table

# The score tables (Iceberg) and the historic table's partition column (one partition per scoring date).
HISTORIC_SCORES = "historic_scores"
LATEST_SCORES = "latest_scores"
SCORE_DATE = "score_date"


def create_namespace(spark: SparkSession, settings: Settings) -> None:
    """Create the tables' namespace unless it exists. Iceberg's JDBC catalog checks and then inserts,
    so two first writes at once can both find it missing and one insert then breaks the catalog
    database's key: that one asks again, and finds it."""
    prepare_catalog(settings)
    statement = f"CREATE NAMESPACE IF NOT EXISTS {catalog_name(settings)}.{NAMESPACE}"
    try:
        spark.sql(statement)
    except (PySparkException, Py4JJavaError):
        spark.sql(statement)  # a concurrent writer created it (any other error raises again)


def _writer(frame: DataFrame, settings: Settings, name: str, properties: dict[str, str] | None) -> Any:
    """A writer to the table whose commit records `properties` in its snapshot summary (lineage)."""
    create_namespace(frame.sparkSession, settings)
    writer = frame.writeTo(table_name(settings, name))
    for key, value in (properties or {}).items():
        writer = writer.option(f"snapshot-property.{key}", value)
    return writer


def _ensure_table(frame: DataFrame, settings: Settings, name: str, column: str | None) -> None:
    """Create the table, empty, with `frame`'s columns and partitioned by `column` (if given), unless it
    exists (or a concurrent writer creates it meanwhile). No fanout writers: each write task sorts its
    rows by partition and writes one file at a time. With Iceberg's default (fanout) every task keeps a
    Parquet writer open per partition it holds, which runs a 1 GB driver out of memory on a few
    hundred days of transactions. Created empty, so that even the first write is a regular write
    with these requirements (a CREATE TABLE AS SELECT fans out regardless)."""
    spark, table = frame.sparkSession, table_name(settings, name)
    try:
        existing = set(spark.table(table).columns)  # one lookup: whether it exists, and its columns
    except AnalysisException as error:
        if error.getCondition() != "TABLE_OR_VIEW_NOT_FOUND":
            raise
    else:
        _add_new_columns(frame, table, existing)
        return
    try:
        empty = frame.limit(0).writeTo(table)
        if column is not None:
            empty = empty.partitionedBy(sf.col(column))
        empty.tableProperty("write.spark.fanout.enabled", "false").create()
    except (AnalysisException, Py4JJavaError) as error:  # Iceberg's AlreadyExistsException reaches Python unconverted
        if "already exists" not in str(error).lower():
            raise


def _add_new_columns(frame: DataFrame, table: str, existing: set[str]) -> None:
    """Add to the table the columns of `frame` it lacks (Iceberg's schema evolution: one metadata
    commit, no data file rewritten, older rows read them as null): a release that writes a new column
    writes to the tables an older release made."""
    for field in frame.schema.fields:
        if field.name not in existing:
            frame.sparkSession.sql(f"ALTER TABLE {table} ADD COLUMN `{field.name}` {field.dataType.simpleString()}")


# Iceberg's exceptions when a concurrent commit won and retrying ours could not reconcile with it.
_CONFLICTS = (
    "org.apache.iceberg.exceptions.CommitFailedException",
    "org.apache.iceberg.exceptions.ValidationException",
)


def _commit(name: str, write: Callable[[], None]) -> None:
    """Run a write; a commit another writer's commit to the same table defeated (after Iceberg's own
    retries) is one line: nothing of this write is in the table, and a rerun is safe."""
    try:
        write()
    except (Py4JJavaError, PySparkException) as error:
        text = str(error)
        conflict = next((kind for kind in _CONFLICTS if kind in text), None)
        if conflict is None:
            raise
        reason = text.split(conflict, 1)[1].lstrip(":) ").splitlines()[0]  # "(class) message" from Spark Connect
        raise PropensityError(
            f"another run committed to the table {name} at the same time and this commit conflicts with it "
            f"({reason}); nothing of this run was committed to it: run it again"
        ) from None


def overwrite_partitions(
    frame: DataFrame, settings: Settings, name: str, column: str, properties: dict[str, str] | None = None
) -> None:
    """Replace, in one commit, every partition of `column` that `frame` has rows for (a rerun of a
    date replaces that date, never duplicates it); the table is created, partitioned by `column`, by
    its first write. `properties` are recorded in the commit's snapshot summary (lineage)."""
    writer = _writer(frame, settings, name, properties)
    _ensure_table(frame, settings, name, column)
    _commit(name, writer.overwritePartitions)


def overwrite_where(
    frame: DataFrame,
    settings: Settings,
    name: str,
    column: str,
    values: list[str],
    properties: dict[str, str] | None = None,
) -> None:
    """Replace, in one commit, every row whose `column` is one of `values` by the rows of `frame`
    (all of them with one of those values): a value `frame` has no rows for ends up empty, where
    `overwrite_partitions` would keep its old rows. The table is created, partitioned by `column`, by
    its first write."""
    writer = _writer(frame, settings, name, properties)
    _ensure_table(frame, settings, name, column)
    _commit(name, lambda: writer.overwrite(sf.col(column).isin(values)))


def replace_table(
    frame: DataFrame,
    settings: Settings,
    name: str,
    properties: dict[str, str] | None = None,
    read_modify_write: bool = False,
    based_on: int | None = None,
) -> None:
    """The whole table replaced by `frame` in one commit: readers see the old rows or the new ones.

    `read_modify_write`: `frame` was derived from the table's snapshot `based_on` (None: the table
    had no snapshot, or did not exist). The commit then fails, in one line, if another writer
    committed rows since (Iceberg's serializable validation from that snapshot, or from the table's
    start), where a plain replace would silently drop them."""
    writer = _writer(frame, settings, name, properties)
    if not read_modify_write:
        _commit(name, writer.createOrReplace)
        return
    _ensure_table(frame, settings, name, None)
    writer = writer.option("isolation-level", "serializable")
    if based_on is not None:
        writer = writer.option("validate-from-snapshot-id", str(int(based_on)))
    _commit(name, lambda: writer.overwrite(sf.lit(True)))


def load_table(settings: Settings, name: str) -> Table | None:
    """The table through PyIceberg (no JVM); None before its first write."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    if not catalog_exists(settings):
        return None
    try:
        return python_catalog(settings).load_table(f"{NAMESPACE}.{name}")
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def partition_updates(settings: Settings, name: str, column: str) -> dict[str, tuple[int | None, str]]:
    """Each partition's value (as text), sorted, with the snapshot that last changed it and when (UTC
    ISO, `timestamp`), from the table's metadata (no data file is read, no JVM started); empty before
    the table's first write. Once maintenance has expired that snapshot, neither is known any more:
    (None, "") — the change is older than every snapshot the table keeps."""
    table = load_table(settings, name)
    if table is None or table.current_snapshot() is None:
        return {}
    rows = table.inspect.partitions().select(["partition", "last_updated_snapshot_id", "last_updated_at"]).to_pylist()
    found = {str(row["partition"][column]): _update(row) for row in rows}
    return dict(sorted(found.items()))


def _update(row: dict[str, Any]) -> tuple[int | None, str]:
    if row["last_updated_snapshot_id"] is None:  # expired
        return None, ""
    return int(row["last_updated_snapshot_id"]), timestamp(row["last_updated_at"].replace(tzinfo=UTC))


def partitions(settings: Settings, name: str, column: str) -> dict[str, int | None]:
    """Each partition's value (as text), sorted, and the snapshot that last changed it (None once
    expired)."""
    return {value: snapshot for value, (snapshot, _) in partition_updates(settings, name, column).items()}


def newest_partition(settings: Settings, name: str, column: str) -> tuple[int, str] | None:
    """The table's current snapshot and the greatest partition value (as text) in it, both from one
    read of its metadata; None while the table is empty or not there."""
    table = load_table(settings, name)
    snapshot = table.current_snapshot() if table is not None else None
    if table is None or snapshot is None:
        return None
    rows = table.inspect.partitions(snapshot_id=snapshot.snapshot_id).select(["partition"]).to_pylist()
    values = [str(row["partition"][column]) for row in rows]
    return (snapshot.snapshot_id, max(values)) if values else None


@dataclass(frozen=True)
class TableSnapshot:
    """One snapshot of a table: what a reader pinned, so that everything it reads comes from it."""

    name: str
    snapshot_id: int
    properties: dict[str, str]
    # (column, value): only the rows of that partition (one date of a table partitioned by date).
    partition: tuple[str, str] | None = None
    committed_at: str = ""  # when the commit became visible (UTC ISO, `timestamp`); empty when unknown


def timestamp(moment: datetime) -> str:
    """A UTC moment as ISO text that sorts as the moments do (always with microseconds)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _committed_at(snapshot: Any) -> str:
    return timestamp(datetime.fromtimestamp(snapshot.timestamp_ms / 1000, UTC))


def _properties(snapshot: Any) -> dict[str, str]:
    """What the commit of a PyIceberg snapshot recorded in its summary (lineage)."""
    summary = snapshot.summary.additional_properties if snapshot.summary else {}
    return {str(k): str(v) for k, v in summary.items()}


def snapshot_history(settings: Settings, name: str) -> list[TableSnapshot]:
    """The snapshots readers of the table have seen, oldest first, as far back as the table keeps them
    (back to the oldest the maintenance step kept); empty before its first write."""
    from pyiceberg.table.snapshots import ancestors_of

    table = load_table(settings, name)
    if table is None:
        return []
    seen = ancestors_of(table.current_snapshot(), table.metadata)
    return [
        TableSnapshot(name, s.snapshot_id, _properties(s), committed_at=_committed_at(s)) for s in reversed(list(seen))
    ]


def current_snapshot(settings: Settings, name: str) -> TableSnapshot | None:
    """The snapshot readers of the table see now, with the properties its commit recorded; None
    before the table's first write."""
    table = load_table(settings, name)
    snapshot = table.current_snapshot() if table is not None else None
    if snapshot is None:
        return None
    return TableSnapshot(name, snapshot.snapshot_id, _properties(snapshot), committed_at=_committed_at(snapshot))


def snapshot_table_name(settings: Settings, name: str, snapshot_id: int) -> str:
    """How Spark names one snapshot of a table (Iceberg's `snapshot_id_<id>` suffix): for readers,
    such as Feast's Spark offline store, that take a table name and nothing else."""
    return f"{table_name(settings, name)}.snapshot_id_{int(snapshot_id)}"


def read_snapshot(spark: SparkSession, settings: Settings, snapshot: TableSnapshot) -> DataFrame:
    """A Spark frame over exactly that snapshot (time travel)."""
    # Security lint (B608): a table name of ours and an integer snapshot id, nothing a user typed.
    query = f"SELECT * FROM {table_name(settings, snapshot.name)} VERSION AS OF {int(snapshot.snapshot_id)}"  # nosec B608
    frame = spark.sql(query)
    if snapshot.partition is not None:
        column, value = snapshot.partition
        frame = frame.where(sf.col(column) == value)
    return frame


def scan_batches(
    settings: Settings,
    name: str,
    batch_rows: int,
    columns: list[str] | None = None,
    snapshot_id: int | None = None,
    partition: tuple[str, str] | None = None,
) -> Iterator[pd.DataFrame]:
    """Stream an Iceberg table (or one snapshot of it, or one partition of that) in bounded batches,
    from Python, without a JVM."""
    from pyiceberg.expressions import AlwaysTrue, BooleanExpression, EqualTo, Reference
    from pyiceberg.expressions.literals import literal

    table = load_table(settings, name)
    if table is None:
        return
    fields = tuple(columns) if columns else ("*",)
    rows: BooleanExpression = AlwaysTrue()
    if partition is not None:
        rows = EqualTo(term=Reference(partition[0]), value=literal(partition[1]))
    scan = table.scan(row_filter=rows, selected_fields=fields, snapshot_id=snapshot_id)
    for batch in scan.to_arrow_batch_reader():
        for start in range(0, batch.num_rows, batch_rows):
            part = batch.slice(start, batch_rows)
            if part.num_rows:
                yield part.to_pandas()


@dataclass(frozen=True)
class Maintenance:
    """What one table's maintenance removed."""

    snapshots_kept: int  # the snapshots left, the current one among them
    files_expired: int  # data and manifest files only expired snapshots referenced, deleted
    orphan_files: int  # files no snapshot references (a killed writer's), deleted


def maintain_table(spark: SparkSession, settings: Settings, name: str, older_than: datetime) -> Maintenance:
    """Expire the table's snapshots committed before `older_than` (never the current one) with the
    files only they referenced, then delete orphan files: files under the table that no snapshot
    references, left by writers killed before their commit, once older than three days (Iceberg's
    default, so a write still running is never touched). Through Iceberg's Spark procedures; the
    table's files are listed with its own file IO (`prefix_listing`: no Hadoop S3 connector)."""
    catalog, table = catalog_name(settings), f"{NAMESPACE}.{name}"
    cutoff = older_than.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    # Security lint (B608): names of ours and a formatted timestamp, nothing a user typed.
    expired = spark.sql(
        f"CALL {catalog}.system.expire_snapshots(table => '{table}', "  # nosec B608
        f"older_than => TIMESTAMP_LTZ '{cutoff}', retain_last => 1)"
    ).first()
    orphans = spark.sql(f"CALL {catalog}.system.remove_orphan_files(table => '{table}', prefix_listing => true)")
    files = ("deleted_data_files_count", "deleted_manifest_files_count", "deleted_manifest_lists_count")
    kept = load_table(settings, name)
    return Maintenance(
        snapshots_kept=len(kept.snapshots()) if kept is not None else 0,
        files_expired=sum(int(expired[column]) for column in files) if expired is not None else 0,
        orphan_files=orphans.count(),
    )
