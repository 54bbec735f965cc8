"""Durable inference records for monitoring, written off the request path.

Requests put records on a bounded queue and never wait; a writer thread appends them as JSON lines
to one file per day and fsyncs each batch. If the queue is full the record is dropped and counted,
rather than slowing down serving.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_STOP = object()


class InferenceLogger:
    def __init__(self, directory: Path, max_queue: int = 10_000) -> None:
        self.directory = directory
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        if self._thread is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
            self._thread.start()

    def log(self, records: list[dict[str, Any]]) -> None:
        """Hand records to the writer; never blocks."""
        try:
            self._queue.put_nowait(records)
        except queue.Full:
            self.dropped += len(records)

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the writer."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty() and len(batch) < 100:
                batch.append(self._queue.get_nowait())
            stop = any(item is _STOP for item in batch)
            records = [r for item in batch if item is not _STOP for r in item]
            if records:
                self._write(records)
            if stop:
                return

    def _write(self, records: list[dict[str, Any]]) -> None:
        path = self.directory / f"{datetime.now(UTC):%Y-%m-%d}.jsonl"
        with open(path, "a") as handle:
            handle.writelines(json.dumps(r, default=str) + "\n" for r in records)
            handle.flush()
            os.fsync(handle.fileno())
        self.written += len(records)


def read_records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("*.jsonl")) for line in path.read_text().splitlines()]
