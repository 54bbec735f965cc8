"""Where tables live and how they change without readers ever seeing a half-written state.

Two kinds of change, each written once here:

* **versioned tables** (latest scores, customers): every write goes to a new version directory,
  then a small pointer file naming it is replaced in one atomic step; readers resolve the pointer.
  Older versions are kept for a while for readers that resolved the previous pointer.
* **partitioned tables** (transactions by date, feature snapshots by date, historic scores by date):
  a partition is written complete under a staging directory, then moved into place whole; a rerun
  of the same key replaces it, never duplicates it.

Small JSON manifests (what changed when) are replaced atomically too.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow.dataset as ds
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as sf

from propensity.catalog import NAMESPACE, catalog_name, python_catalog, table_name
from propensity.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.table import Table

CURRENT_POINTER = "_CURRENT"
# The score tables (Iceberg) and the historic table's partition column (one partition per scoring date).
HISTORIC_SCORES = "historic_scores"
LATEST_SCORES = "latest_scores"
SCORE_DATE = "score_date"
VERSION_PREFIX = "v-"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `target` in one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def new_version() -> str:
    """A version name that sorts by creation time and never collides."""
    return f"{VERSION_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"


def current_version(table: Path) -> Path | None:
    """The directory readers of a versioned table see now, or None before its first write."""
    pointer = table / CURRENT_POINTER
    if not pointer.is_file():
        return None
    return table / pointer.read_text().strip()


def switch_version(table: Path, version: str, keep: int = 2) -> None:
    """Point readers at `version` in one atomic step, then drop versions no reader can still see.

    The version readers saw until now is always kept: a version written by a run killed before its
    switch (never seen by anyone) must not take its place among the `keep` newest."""
    if not (table / version).is_dir():
        raise FileNotFoundError(f"version {version} of {table} was not written")
    previous = current_version(table)
    with atomic_path(table / CURRENT_POINTER) as tmp:
        tmp.write_text(version)
    versions = sorted(p.name for p in table.glob(f"{VERSION_PREFIX}*") if p.is_dir())
    for old in versions[:-keep]:
        if old != version and (previous is None or old != previous.name):
            shutil.rmtree(table / old, ignore_errors=True)


STALE_STAGING_HOURS = 24.0  # no write of a partition runs this long; an older staging folder is a killed run's


def staging_dir(table: Path) -> Path:
    """A fresh path beside `table` (same file system, so moves are renames) for one write; the
    writer (Spark) creates it. Staging folders of `table` left by killed runs (untouched for
    STALE_STAGING_HOURS) are removed first; a concurrent writer's recent folder is left alone."""
    table.parent.mkdir(parents=True, exist_ok=True)
    cutoff = datetime.now(UTC).timestamp() - STALE_STAGING_HOURS * 3600
    for old in table.parent.glob(f".staging-{table.name}-*"):
        try:
            stale = old.stat().st_mtime < cutoff
        except FileNotFoundError:  # removed by another writer meanwhile
            continue
        if stale:
            shutil.rmtree(old, ignore_errors=True)
    return table.parent / f".staging-{table.name}-{uuid.uuid4().hex}"


def partition_name(column: str, value: str) -> str:
    return f"{column}={value}"


def partition_values(table: Path, column: str) -> list[str]:
    """The values of the committed partitions of `table` (directories named `column=value`), sorted."""
    if not table.is_dir():
        return []
    prefix = f"{column}="
    return sorted(p.name[len(prefix) :] for p in table.iterdir() if p.is_dir() and p.name.startswith(prefix))


def replace_partitions(staged: Path, table: Path, column: str) -> list[str]:
    """Move every `column=value` partition written under `staged` into `table`, each replacing the
    partition of the same value whole; returns the values moved. `staged` is removed afterwards.

    Each partition is replaced in one atomic exchange where the file system can (Linux): a reader
    sees it old or new, never missing. Elsewhere it takes two renames, and a run killed between them
    leaves the old partition only in its hidden trash folder; the next replace of the table puts it
    back. Partitions are replaced one by one: a killed run can leave some new and some old, each
    whole, until its rerun replaces the rest."""
    table.mkdir(parents=True, exist_ok=True)
    _restore_trashed_partitions(table, column)
    moved = []
    for value in partition_values(staged, column):
        name = partition_name(column, value)
        target = table / name
        # After an exchange the old partition is under `staged`, removed with it below.
        if not (target.exists() and exchange_paths(staged / name, target)):
            trash = table / f".{name}.{uuid.uuid4().hex}{TRASH_SUFFIX}"
            if target.exists():
                os.replace(target, trash)
            os.replace(staged / name, target)
            shutil.rmtree(trash, ignore_errors=True)
        moved.append(value)
    shutil.rmtree(staged, ignore_errors=True)
    return moved


TRASH_SUFFIX = ".old"
_RENAME_EXCHANGE = 2  # renameat2(2) flag
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    """The C library's renameat2, looked up once; None where there is none."""
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2` with RENAME_EXCHANGE); False,
    with nothing changed, where the system or the file system cannot (macOS, NFS, old kernels)."""
    import ctypes

    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _restore_trashed_partitions(table: Path, column: str) -> None:
    """Undo what a replace killed between its two renames left: a partition only in its trash folder
    goes back in place; a trash folder whose partition is in place is removed."""
    for trash in table.glob(f".{column}=*{TRASH_SUFFIX}"):
        target = table / trash.name[1:].rsplit(".", 2)[0]
        try:
            if target.exists():
                shutil.rmtree(trash)
            else:
                os.replace(trash, target)
        except FileNotFoundError:  # handled by a concurrent writer meanwhile
            continue


def read_manifest(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def write_manifest(path: Path, content: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1, sort_keys=True))


def parquet_batches(path: Path, batch_rows: int, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """Stream a Parquet table (the files Spark's partitions wrote) in bounded batches."""
    if not path.exists():
        return
    dataset = ds.dataset(str(path), format="parquet", partitioning="hive", exclude_invalid_files=True)
    for batch in dataset.to_batches(columns=columns, batch_size=batch_rows):
        if batch.num_rows:
            yield batch.to_pandas()


# ---------------------------------------------------------------------------------------------------
# Iceberg tables (docs/decisions.md, Tables). Commits, snapshots and cleanup belong to the format;
# these are the few ways the pipeline writes and reads them. The catalog: propensity.catalog.


def create_namespace(spark: SparkSession, settings: Settings) -> None:
    spark.sql(f"CREATE NAMESPACE IF NOT EXISTS {catalog_name(settings)}.{NAMESPACE}")


def table_exists(spark: SparkSession, settings: Settings, name: str) -> bool:
    return bool(spark.catalog.tableExists(table_name(settings, name)))


def _writer(frame: DataFrame, settings: Settings, name: str, properties: dict[str, str] | None) -> Any:
    """A writer to the table whose commit records `properties` in its snapshot summary (lineage)."""
    create_namespace(frame.sparkSession, settings)
    writer = frame.writeTo(table_name(settings, name))
    for key, value in (properties or {}).items():
        writer = writer.option(f"snapshot-property.{key}", value)
    return writer


def _created(writer: Any, frame: DataFrame, settings: Settings, name: str, column: str) -> bool:
    """Create the table, partitioned by `column`, with `frame`'s rows when it does not exist yet
    (True); False when it does, or was created meanwhile by a concurrent writer."""
    if table_exists(frame.sparkSession, settings, name):
        return False
    try:
        writer.partitionedBy(sf.col(column)).create()
        return True
    except AnalysisException as error:
        if "already exists" not in str(error).lower():
            raise
        return False


def overwrite_partitions(
    frame: DataFrame, settings: Settings, name: str, column: str, properties: dict[str, str] | None = None
) -> None:
    """Replace, in one commit, every partition of `column` that `frame` has rows for (a rerun of a
    date replaces that date, never duplicates it); the table is created, partitioned by `column`, by
    its first write. `properties` are recorded in the commit's snapshot summary (lineage)."""
    writer = _writer(frame, settings, name, properties)
    if not _created(writer, frame, settings, name, column):
        writer.overwritePartitions()


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
    if not _created(writer, frame, settings, name, column):
        writer.overwrite(sf.col(column).isin(values))


def replace_table(frame: DataFrame, settings: Settings, name: str, properties: dict[str, str] | None = None) -> None:
    """The whole table replaced by `frame` in one commit: readers see the old rows or the new ones."""
    _writer(frame, settings, name, properties).createOrReplace()


def load_table(settings: Settings, name: str) -> Table | None:
    """The table through PyIceberg (no JVM); None before its first write."""
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    try:
        return python_catalog(settings).load_table(f"{NAMESPACE}.{name}")
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def partition_updates(settings: Settings, name: str, column: str) -> dict[str, tuple[int, datetime]]:
    """Each partition's value (as text), sorted, with the snapshot that last changed it and when
    (UTC), from the table's metadata (no data file is read, no JVM started); empty before the
    table's first write."""
    table = load_table(settings, name)
    if table is None or table.current_snapshot() is None:
        return {}
    rows = table.inspect.partitions().select(["partition", "last_updated_snapshot_id", "last_updated_at"]).to_pylist()
    found = {str(row["partition"][column]): _update(row) for row in rows}
    return dict(sorted(found.items()))


def _update(row: dict[str, Any]) -> tuple[int, datetime]:
    return int(row["last_updated_snapshot_id"]), row["last_updated_at"].replace(tzinfo=UTC)


def partitions(settings: Settings, name: str, column: str) -> dict[str, int]:
    """Each partition's value (as text), sorted, and the snapshot that last changed it."""
    return {value: snapshot for value, (snapshot, _) in partition_updates(settings, name, column).items()}


@dataclass(frozen=True)
class TableSnapshot:
    """One snapshot of a table: what a reader pinned, so that everything it reads comes from it."""

    name: str
    snapshot_id: int
    properties: dict[str, str]
    # (column, value): only the rows of that partition (one date of a table partitioned by date).
    partition: tuple[str, str] | None = None


def _properties(snapshot: Any) -> dict[str, str]:
    """What the commit of a PyIceberg snapshot recorded in its summary (lineage)."""
    summary = snapshot.summary.additional_properties if snapshot.summary else {}
    return {str(k): str(v) for k, v in summary.items()}


def snapshot_history(settings: Settings, name: str) -> list[TableSnapshot]:
    """The snapshots readers of the table have seen, oldest first, as far back as the table keeps them
    (the maintenance step expires old ones); empty before its first write."""
    from pyiceberg.table.snapshots import ancestors_of

    table = load_table(settings, name)
    if table is None:
        return []
    seen = ancestors_of(table.current_snapshot(), table.metadata)
    return [TableSnapshot(name, s.snapshot_id, _properties(s)) for s in reversed(list(seen))]


def current_snapshot(settings: Settings, name: str) -> TableSnapshot | None:
    """The snapshot readers of the table see now, with the properties its commit recorded; None
    before the table's first write."""
    table = load_table(settings, name)
    snapshot = table.current_snapshot() if table is not None else None
    if snapshot is None:
        return None
    return TableSnapshot(name, snapshot.snapshot_id, _properties(snapshot))


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
