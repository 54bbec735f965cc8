"""Shared records on the configured storage: whole-object writes, a clear error when the store is
unreachable (before anything is written), and an inference log that survives the store being down."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

import pytest

from components.features import materialize_features
from propensity.errors import PropensityError
from propensity.feature_table import FEATURE_SNAPSHOTS
from propensity.settings import Settings, get_settings
from propensity.storage import Storage
from propensity.tables import load_table
from serving import inference_log
from serving.inference_log import InferenceLogger, read_records
from tests.services import free_port


def unreachable(tmp_path: Path) -> Settings:
    """Settings whose object store is a closed port on loopback."""
    return get_settings(
        home=tmp_path / "home", storage="s3://propensity/prod", s3_endpoint_url=f"http://127.0.0.1:{free_port()}"
    )


def test_records_are_replaced_whole_and_listed_by_prefix(settings: Settings) -> None:
    store = Storage(settings)
    store.check()
    assert store.read_json("state/x.json", []) == []
    store.write_json("state/x.json", {"a": 1})
    store.write_json("state/x.json", {"a": 2})
    store.write_bytes("inference/date=2026-01-01/b.parquet", b"2")
    store.write_bytes("inference/date=2026-01-01/a.parquet", b"1")
    assert store.read_json("state/x.json") == {"a": 2}
    assert list(store.keys("inference")) == [
        "inference/date=2026-01-01/a.parquet",
        "inference/date=2026-01-01/b.parquet",
    ]
    assert sorted(p.name for p in (settings.home / "state").iterdir()) == ["x.json"]  # no temporary left
    store.delete("state/x.json")
    store.delete("state/x.json")
    assert store.read_json("state/x.json") is None


def test_an_unreachable_object_store_is_one_line_naming_it(tmp_path: Path) -> None:
    settings = unreachable(tmp_path)
    with pytest.raises(PropensityError, match=r"cannot write to storage s3://propensity/prod \(http://127\.0\.0\.1:"):
        Storage(settings).check()


def test_materialize_stops_before_writing_when_the_object_store_is_down(lake: Settings, tmp_path: Path) -> None:
    settings = get_settings(
        home=lake.home, storage="s3://propensity/prod", s3_endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    with pytest.raises(PropensityError, match="s3://propensity/prod"):
        materialize_features(settings)
    assert load_table(settings, FEATURE_SNAPSHOTS) is None
    assert not (settings.feature_store_dir / "registry.db").exists()


def test_inference_log_keeps_its_spool_while_storage_is_down_and_publishes_later(
    settings: Settings, tmp_path: Path
) -> None:
    spool = settings.inference_spool_dir
    down = InferenceLogger(spool, Storage(unreachable(tmp_path)))
    down.start()
    down.log([{"customer_id": "c-1", "score": 0.25, "source": "batch"}])
    down.log([{"customer_id": "c-2", "score": 0.75, "source": "realtime"}])
    down.stop()
    assert down.written == 2 and down.publish_failures >= 1 and down.dropped == 0
    assert len(list(spool.rglob("*.jsonl"))) == 1

    up = InferenceLogger(spool, Storage(settings))
    up.start()  # publishes what the earlier process left
    assert up._own is not None
    up_folder = up._own
    up.log([{"customer_id": "c-3", "score": 0.5, "source": "batch"}])
    up.stop()
    assert not list(spool.rglob("*.jsonl")) and [p.name for p in spool.iterdir()] == [up_folder.name]
    records = read_records(Storage(settings))
    assert [r["customer_id"] for r in records] == ["c-1", "c-2", "c-3"]
    assert records[0]["score"] == 0.25 and records[1]["source"] == "realtime"


def test_writers_in_several_processes_share_a_spool_without_touching_each_others_segments(
    settings: Settings,
) -> None:
    """KServe workers are processes with one writer each. A writer rotating often must not publish
    or delete a segment another live writer still appends to; a dead writer's are adopted."""
    spool = settings.inference_spool_dir
    dead = spool / "12345-deadbeef"  # a writer that was killed: segment closed, lock free
    dead.mkdir(parents=True)
    (dead / ".lock").touch()
    (dead / "2026-12-01T000000000000-aaaaaaaa.jsonl").write_bytes(b'{"customer_id": "dead-1"}\n')
    fast = InferenceLogger(spool, Storage(settings), rotate_seconds=0.01)
    slow = InferenceLogger(spool, Storage(settings), rotate_seconds=3600)
    slow.start()
    fast.start()
    try:
        for i in range(50):
            slow.log([{"customer_id": f"slow-{i}"}])
            fast.log([{"customer_id": f"fast-{i}"}])
            time.sleep(0.01)
        for _ in range(100):
            if fast.written == 50 and slow.written == 50 and not dead.exists():
                break
            time.sleep(0.1)
        assert fast.written == 50 and slow.written == 50
        assert fast._thread is not None and fast._thread.is_alive(), "a writer thread died"
        assert slow._thread is not None and slow._thread.is_alive(), "a writer thread died"
        assert not dead.exists(), "the dead writer's segment was not adopted"
        published = {r["customer_id"] for r in read_records(Storage(settings))}
        assert "dead-1" in published and not any(c.startswith("slow-") for c in published)
    finally:
        fast.stop()
        slow.stop()
    ids = [r["customer_id"] for r in read_records(Storage(settings))]
    assert sorted(ids) == sorted(["dead-1"] + [f"fast-{i}" for i in range(50)] + [f"slow-{i}" for i in range(50)])
    assert not list(spool.rglob("*.jsonl"))


def test_a_writer_starting_beside_one_that_adopts_keeps_its_folder(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KServe's workers start together: another writer adopting unlocked folders at the worst moment
    of a start (right after the folder is made, or after its lock file is opened but before it is
    locked) must not take the new writer's folder for a dead writer's and remove it."""
    spool = settings.inference_spool_dir
    adopter = InferenceLogger(spool, Storage(settings), rotate_seconds=3600)
    adopter._own = spool / "adopter"
    adopter._own.mkdir(parents=True)
    adopting = False

    def adopt_now() -> None:
        nonlocal adopting
        if not adopting:
            adopting = True
            adopter._publish_closed()
            adopting = False

    real_mkdir, real_flock = Path.mkdir, fcntl.flock
    fired: dict[str, list[str]] = {"after mkdir": [], "before flock": []}  # the folders adopted beside

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        real_mkdir(self, *args, **kwargs)
        fired["after mkdir"].append(self.name)
        adopt_now()

    def flock(fd: Any, operation: int) -> None:
        fired["before flock"].append(str(operation))
        adopt_now()
        real_flock(fd, operation)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(inference_log.fcntl, "flock", flock)
    writer = InferenceLogger(spool, Storage(settings), rotate_seconds=3600)
    writer.start()
    monkeypatch.undo()
    # Both moments really came: the adopter ran right after the writer's hidden folder was made, and
    # right before its lock was taken.
    assert any(name.startswith(".") for name in fired["after mkdir"]), fired
    assert fired["before flock"], fired
    try:
        writer.log([{"customer_id": "c-1"}])
    finally:
        writer.stop()
    assert writer.written == 1 and writer.failed == 0
    assert [r["customer_id"] for r in read_records(Storage(settings))] == ["c-1"]


def test_a_writer_killed_while_starting_leaves_nothing_behind(settings: Settings) -> None:
    """A writer killed between making its hidden folder and renaming it: the next writer to rotate
    removes the folder once it is older than any start takes, and never a start in progress."""
    spool = settings.inference_spool_dir
    old = time.time() - inference_log.STARTING_SECONDS - 1
    abandoned, no_lock, starting, recent = (spool / name for name in (".1-dead", ".2-dead", ".3-live", ".4-new"))
    for folder in (abandoned, no_lock, starting, recent):
        folder.mkdir(parents=True)
    for folder in (abandoned, starting, recent):
        (folder / inference_log.LOCK).touch()
    held = open(starting / inference_log.LOCK, "a")  # noqa: SIM115 (closed below)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    for folder in (abandoned, no_lock, starting):
        os.utime(folder, (old, old))
    writer = InferenceLogger(spool, Storage(settings), rotate_seconds=0.01)
    writer.start()
    try:
        writer.log([{"customer_id": "c-1"}])
        deadline = time.monotonic() + 10
        while abandoned.exists() or no_lock.exists():
            assert time.monotonic() < deadline, sorted(p.name for p in spool.iterdir())
            time.sleep(0.05)
    finally:
        writer.stop()
        held.close()
    assert starting.is_dir() and recent.is_dir()
    assert [r["customer_id"] for r in read_records(Storage(settings))] == ["c-1"]


def test_a_segment_is_published_when_it_is_old_enough(settings: Settings) -> None:
    logger = InferenceLogger(settings.inference_spool_dir, Storage(settings), rotate_seconds=0.01)
    logger.start()
    logger.log([{"customer_id": "c-1"}])
    try:
        for _ in range(100):
            if read_records(Storage(settings)):
                break
            time.sleep(0.1)
        assert [r["customer_id"] for r in read_records(Storage(settings))] == ["c-1"]
    finally:
        logger.stop()
