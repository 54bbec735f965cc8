"""The JVM libraries: the lock pins what the project asks for, and nothing unverified is ever kept."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from propensity import jvm
from propensity.errors import PropensityError


def test_the_lock_pins_every_root_at_its_version() -> None:
    pinned = {(jar.group, jar.artifact): jar.version for jar in jvm.read_lock()}
    for group, artifact, version in jvm.ROOTS:
        assert pinned.get((group, artifact)) == version, f"{group}:{artifact} is not pinned at {version}: run make lock"
    for jar in jvm.read_lock():
        assert len(jar.sha256) == 64 and jar.size > 0
        excluded = {(g, a) for g, a in jvm.EXCLUDED} | {(g, "*") for g, a in jvm.EXCLUDED if a == "*"}
        assert (jar.group, jar.artifact) not in excluded and (jar.group, "*") not in excluded


def test_the_ivy_module_names_roots_and_exclusions() -> None:
    module = jvm.ivy_module([("a.b", "c", "1.0")], [("d", "*")])
    assert '<dependency org="a.b" name="c" rev="1.0"' in module
    assert '<exclude org="d" module="*"/>' in module


@pytest.fixture
def repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A Maven-layout folder served over HTTP on a free port, set as the repository to download from."""
    root = tmp_path / "repository"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PROPENSITY_MAVEN_REPOSITORY", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield root
    finally:
        server.shutdown()


def publish(repository: Path, content: bytes, sha256: str | None = None) -> jvm.Jar:
    jar = jvm.Jar("org.example", "thing", "1.0", sha256 or hashlib.sha256(content).hexdigest(), len(content))
    path = repository / "org/example/thing/1.0/thing-1.0.jar"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return jar


def test_fetch_downloads_and_verifies(repository: Path, tmp_path: Path) -> None:
    jar = publish(repository, b"PK jar bytes")
    cache = tmp_path / "cache"
    assert jvm.fetch([jar], cache) == [cache / "thing-1.0.jar"]
    assert (cache / "thing-1.0.jar").read_bytes() == b"PK jar bytes"
    assert jvm.fetch([jar], cache) == [cache / "thing-1.0.jar"]  # cached, verified again


def test_a_checksum_mismatch_keeps_nothing_and_names_the_jar(repository: Path, tmp_path: Path) -> None:
    jar = publish(repository, b"tampered bytes", sha256="0" * 64)
    cache = tmp_path / "cache"
    expected = r"checksum mismatch for thing-1\.0\.jar from http://.*expected sha256 0{64}"
    with pytest.raises(PropensityError, match=expected) as error:
        jvm.fetch([jar], cache)
    assert "\n" not in str(error.value)
    assert list(cache.iterdir()) == []


def test_a_tampered_cached_jar_is_refused(repository: Path, tmp_path: Path) -> None:
    jar = publish(repository, b"PK jar bytes")
    cache = tmp_path / "cache"
    jvm.fetch([jar], cache)
    (cache / "thing-1.0.jar").write_bytes(b"PK jar bytez")
    with pytest.raises(PropensityError, match=r"checksum mismatch for the cached .*thing-1\.0\.jar.*delete it"):
        jvm.fetch([jar], cache)


def test_an_unreachable_repository_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from propensity.ports import free_port

    monkeypatch.setenv("PROPENSITY_MAVEN_REPOSITORY", f"http://127.0.0.1:{free_port()}")
    jar = jvm.Jar("org.example", "thing", "1.0", "0" * 64, 1)
    with pytest.raises(PropensityError, match=r"cannot download http://127\.0\.0\.1:.*/thing-1\.0\.jar"):
        jvm.fetch([jar], tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_command_exits_non_zero_with_one_line(
    repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jar = publish(repository, b"tampered bytes", sha256="1" * 64)
    lock = tmp_path / "jvm.lock"
    jvm.write_lock([jar], lock)
    monkeypatch.setattr(jvm, "LOCK", lock)
    monkeypatch.setenv("PROPENSITY_JARS", str(tmp_path / "cache"))
    assert jvm.main(["fetch"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: checksum mismatch for thing-1.0.jar")
    assert not (tmp_path / "cache" / "thing-1.0.jar").exists()


def test_a_malformed_lock_line_is_named(tmp_path: Path) -> None:
    lock = tmp_path / "jvm.lock"
    lock.write_text("# header\norg.example:thing sha256=ab size=1\n")
    with pytest.raises(PropensityError, match=r"jvm.lock:2: expected"):
        jvm.read_lock(lock)
