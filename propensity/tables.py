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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds

CURRENT_POINTER = "_CURRENT"
# The historic scores table's partition column (one partition per scoring date).
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
