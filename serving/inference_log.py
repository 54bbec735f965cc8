"""Durable inference records for monitoring, written off the request path.

Requests put records on a bounded queue and never wait; a writer thread appends them as JSON lines
to a local spool segment and fsyncs each batch. A segment is closed after `rotate_seconds` (or
`rotate_bytes`) and on stop, and published to the configured storage as one Parquet object,
`inference/date=YYYY-MM-DD/<segment>.parquet`; only then is the spool file removed. A segment that
cannot be published (storage down) stays in the spool and is retried at the next rotation and at
the next start. If the queue is full a record is dropped and counted, rather than slowing serving.
A batch that cannot be written (the spool's disk is full) is counted as failed and cut off the
segment again, so no torn line is left behind; the writer goes on with the next batch. A line torn
by a process killed mid-write is skipped (and counted) when its segment is published.

Each writer (one per serving process: KServe workers are processes) spools into a folder of its own,
`<spool>/<pid>-<random>/`, and holds an exclusive lock on it while it runs (from before the folder
appears in the spool). Writers never touch another live writer's segments; a folder whose lock is
free belongs to a process that has ended, and the next writer to rotate publishes its segments and
removes it. It also removes the hidden folder of a writer killed while starting, once a minute old.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import queue
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import Counter

from propensity.storage import Storage

PREFIX = "inference"
LOCK = ".lock"
STARTING_SECONDS = 60.0  # a writer whose hidden folder is older than this died starting
_STOP = object()
logger = logging.getLogger(__name__)
# Every record handed to the log ends as exactly one of: written (to the spool), dropped (queue
# full), failed (the spool could not be written). Published segments count the torn lines skipped.
RECORDS = Counter("propensity_inference_records", "Inference records by what became of them", ["outcome"])
TORN_LINES = Counter("propensity_inference_torn_lines", "Spooled lines skipped on publishing: cut by a crash")


class InferenceLogger:
    def __init__(
        self,
        spool: Path,
        storage: Storage,
        rotate_seconds: float = 300.0,
        rotate_bytes: int = 32 * 1024 * 1024,
        max_queue: int = 10_000,
    ) -> None:
        self.spool = spool
        self.storage = storage
        self.rotate_seconds = rotate_seconds
        self.rotate_bytes = rotate_bytes
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._own: Path | None = None  # this writer's folder in the spool
        self._lock: IO[str] | None = None
        self._segment: Path | None = None
        self._opened = 0.0
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self.published_segments = 0
        self.publish_failures = 0

    def start(self) -> None:
        if self._thread is None:
            name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            # The folder appears in the spool only with its lock held: made under a hidden name that
            # other writers skip, locked, then renamed. Made in place, another writer's adoption
            # could take the unlocked folder for a dead writer's and remove it under this one.
            making = self.spool / f".{name}"
            making.mkdir(parents=True)
            self._lock = open(making / LOCK, "w")  # noqa: SIM115 (held until stop)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._own = self.spool / name
            making.rename(self._own)
            self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
            self._thread.start()

    def log(self, records: list[dict[str, Any]]) -> None:
        """Hand records to the writer; never blocks."""
        try:
            self._queue.put_nowait(records)
        except queue.Full:
            self.dropped += len(records)
            RECORDS.labels("dropped").inc(len(records))

    def stop(self, timeout: float = 30.0) -> None:
        """Flush what is queued, publish the open segment and stop the writer."""
        if self._thread is not None:
            with contextlib.suppress(queue.Full):  # a writer that cannot keep up still gets `timeout`
                self._queue.put(_STOP, timeout=timeout)
            self._thread.join(timeout)
            self._thread = None
        if self._lock is not None:
            self._lock.close()  # releases the folder: what is left in it goes to the next writer
            self._lock = None

    def _run(self) -> None:
        self._publish_closed()  # segments earlier processes left behind
        while True:
            try:
                batch = [self._queue.get(timeout=max(1.0, self.rotate_seconds / 10))]
            except queue.Empty:
                batch = []
            while not self._queue.empty() and len(batch) < 100:
                batch.append(self._queue.get_nowait())
            stop = any(item is _STOP for item in batch)
            records = [r for item in batch if item is not _STOP for r in item]
            if records:
                try:
                    self._write(records)
                except Exception:  # never let one bad batch stop the log (write errors are handled inside)
                    self.failed += len(records)
                    RECORDS.labels("failed").inc(len(records))
                    logger.exception("could not spool %d inference records; counted as failed", len(records))
            if stop or self._due():
                self._segment = None
                self._publish_closed()
            if stop:
                return

    def _due(self) -> bool:
        if self._segment is None:
            return False
        age = time.monotonic() - self._opened
        try:
            size = self._segment.stat().st_size
        except OSError:  # not created: the spool's disk was full
            size = 0
        return age >= self.rotate_seconds or size >= self.rotate_bytes

    def _write(self, records: list[dict[str, Any]]) -> None:
        if self._segment is None:
            assert self._own is not None
            self._segment = self._own / f"{datetime.now(UTC):%Y-%m-%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.jsonl"
            self._opened = time.monotonic()
        start = None
        try:
            with open(self._segment, "ab") as handle:
                start = handle.tell()
                # orjson: the writer shares the serving process's interpreter, so it should cost little.
                handle.writelines(orjson.dumps(r, default=str) + b"\n" for r in records)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:  # e.g. the disk is full: lose this batch, keep the segment whole
            self.failed += len(records)
            RECORDS.labels("failed").inc(len(records))
            logger.error("could not spool %d inference records (%s); counted as failed", len(records), error)
            if start is not None:
                with contextlib.suppress(OSError):
                    os.truncate(self._segment, start)  # truncating needs no space
            return
        self.written += len(records)
        RECORDS.labels("written").inc(len(records))

    def _publish_closed(self) -> None:
        assert self._own is not None
        if not self._publish_folder(self._own):
            return
        writers = (p for p in self.spool.iterdir() if p.is_dir() and p != self._own and not p.name.startswith("."))
        for folder in sorted(writers):
            try:
                lock = open(folder / LOCK, "a")  # noqa: SIM115 (closed by the with below)
            except FileNotFoundError:
                continue  # another writer just adopted and removed it
            with lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer's folder, or one another writer is adopting
                if not self._publish_folder(folder):
                    return
                with contextlib.suppress(OSError):  # a writer that opened the lock meanwhile finds it empty
                    (folder / LOCK).unlink()
                    folder.rmdir()
        self._remove_abandoned_starts()

    def _remove_abandoned_starts(self) -> None:
        """Remove the hidden folder of a writer killed while starting (between its mkdir and its
        rename). Such a folder never holds a record; a live start takes microseconds, so one older
        than STARTING_SECONDS whose lock is free was abandoned."""
        for folder in self.spool.glob(".*"):
            try:
                if not folder.is_dir() or time.time() - folder.stat().st_mtime < STARTING_SECONDS:
                    continue
                with open(folder / LOCK, "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    (folder / LOCK).unlink()
                folder.rmdir()
            except OSError:  # a live start holding its lock, or another writer removing it too
                continue

    def _publish_folder(self, folder: Path) -> bool:
        """Publish and remove every closed segment in `folder`; False once storage fails."""
        for segment in sorted(folder.glob("*.jsonl")):
            if segment == self._segment:
                continue
            try:
                publish_segment(self.storage, segment)
            except Exception:  # storage down: keep the spool file, try again later
                self.publish_failures += 1
                logger.exception("could not publish inference log segment %s to %s", segment, self.storage.url)
                return False
            segment.unlink()
            self.published_segments += 1
        return True


def publish_segment(storage: Storage, segment: Path) -> str:
    """One spool segment as one Parquet object under `inference/date=<day it was opened>/`."""
    records = []
    for line in segment.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:  # the last line of a process killed while writing it
            TORN_LINES.inc()
            logger.warning("skipping a torn line in inference log segment %s", segment)
    key = f"{PREFIX}/date={segment.name[:10]}/{segment.stem}"
    if not records:
        return key
    try:
        table = pa.Table.from_pylist(records)
    except pa.ArrowException:  # values of mixed types in one field: keep them as written
        storage.write_bytes(f"{key}.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in records))
        return f"{key}.jsonl"
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(f"{key}.parquet", buffer.getvalue())
    return f"{key}.parquet"


def read_records(storage: Storage) -> list[dict[str, Any]]:
    """Every published inference record, oldest segment first."""
    records: list[dict[str, Any]] = []
    for key in storage.keys(PREFIX):
        data = storage.read_bytes(key)
        if data is None:
            continue
        if key.endswith(".parquet"):
            records.extend(pq.read_table(io.BytesIO(data)).to_pylist())
        elif key.endswith(".jsonl"):
            records.extend(json.loads(line) for line in data.decode().splitlines() if line.strip())
    return records
