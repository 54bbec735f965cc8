"""Injected faults under the inference log: a full disk under the spool (a real, small tmpfs) and a
line torn by a process killed while writing it. Serving never waits on either; every record ends
up written, dropped or failed, and counted; what is published always parses.

The server-level faults (killed mid-request and mid-swap, the online store or the registry gone)
are in tests/test_serving_http.py and tests/test_serving_health.py, against a real server.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from propensity.settings import Settings
from propensity.storage import Storage
from serving.inference_log import InferenceLogger, publish_segment, read_records

SPOOL_BYTES = 64 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: mounting needs root (as in CI); elsewhere the test says so and skips."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SPOOL_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs needs root (run as root, as CI does): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def record(i: int) -> dict[str, object]:
    return {"customer_id": f"c-{i:06d}", "score": 0.5, "source": "batch", "note": "x" * 150}


def wait_for(condition: object, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_full_spool_disk_counts_the_lost_records_and_the_writer_goes_on(settings: Settings, small_disk: Path) -> None:
    log = InferenceLogger(small_disk / "spool", Storage(settings), rotate_seconds=3600)
    log.start()
    try:
        # About 200 bytes a record: 1,000 records are three times the disk.
        for i in range(0, 1000, 10):
            log.log([record(j) for j in range(i, i + 10)])
            time.sleep(0.002)
        wait_for(lambda: log.written + log.failed + log.dropped == 1000)
        assert log.failed > 0 and log.written > 0 and log.dropped == 0, (log.written, log.failed)
        # The segment holds exactly the written records: no torn line from the failed writes.
        lines = b"".join(p.read_bytes() for p in (small_disk / "spool").rglob("*.jsonl")).splitlines()
        assert len(lines) == log.written
        written_before = log.written
        # Space comes back (the segment is published and removed): the same writer goes on.
        log.rotate_seconds = 0.1
        log.log([record(5000)])
        wait_for(lambda: log.published_segments >= 1)
        log.log([record(5001)])
        wait_for(lambda: log.written >= written_before + 1 and not list((small_disk / "spool").rglob("*.jsonl")))
    finally:
        log.stop()
    published = read_records(Storage(settings))
    assert len(published) == log.written and log.written + log.failed == 1002
    assert "c-005001" in {r["customer_id"] for r in published}


def test_a_line_torn_by_a_crash_is_skipped_when_publishing(settings: Settings, tmp_path: Path) -> None:
    segment = tmp_path / "2026-12-04T000000000000-abcdef01.jsonl"
    segment.write_bytes(
        b'{"customer_id": "c-1", "score": 0.1}\n{"customer_id": "c-2", "score": 0.2}\n{"customer_id": "c-'
    )
    publish_segment(Storage(settings), segment)
    assert [r["customer_id"] for r in read_records(Storage(settings))] == ["c-1", "c-2"]


def test_a_segment_left_by_a_killed_writer_is_published_by_the_next(settings: Settings) -> None:
    spool = settings.inference_spool_dir
    dead = spool / "12345-deadbeef"
    dead.mkdir(parents=True)
    (dead / ".lock").touch()  # its lock died with the process
    (dead / "2026-12-04T000000000000-00000001.jsonl").write_bytes(b'{"customer_id": "c-1"}\n{"customer_id"')
    log = InferenceLogger(spool, Storage(settings))
    log.start()
    log.stop()
    assert [r["customer_id"] for r in read_records(Storage(settings))] == ["c-1"]
    assert not dead.exists()
