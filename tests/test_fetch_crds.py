"""`make crds` (manifests/fetch_crds.py) against a mirror on loopback: pinned files land, verified."""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_crds", REPO / "manifests" / "fetch_crds.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch_crds = _load_script()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1 serving `tmp_path/mirror`."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _lock(path: Path, files: dict[str, bytes], base_url: str) -> Path:
    lines = [f"{name} {hashlib.sha256(data).hexdigest()} {base_url}/{name}" for name, data in files.items()]
    path.write_text("# file sha256 url\n" + "\n".join(lines) + "\n")
    return path


def test_pinned_lock_names_every_crd_the_manifests_use() -> None:
    names = [name for name, _, _ in fetch_crds.read_lock(fetch_crds.DEFAULT_LOCK)]
    assert "serving.kserve.io_inferenceservices.yaml" in names
    assert "sparkoperator.k8s.io_sparkapplications.yaml" in names
    for _, sha, url in fetch_crds.read_lock(fetch_crds.DEFAULT_LOCK):
        assert len(sha) == 64 and url.startswith("https://"), url


def test_downloads_verifies_and_caches(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mirror
    files = {"a.example.io_things.yaml": b"kind: CustomResourceDefinition\n", "b.example.io_x.yaml": b"x: 1\n"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    lock, dest = _lock(tmp_path / "crds.lock", files, url), tmp_path / "cache"

    assert fetch_crds.main(["--lock", str(lock), "--dest", str(dest)]) == 0
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == files
    # Cached and verified: a second run downloads nothing, even with the mirror emptied.
    for name in files:
        (root / name).unlink()
    assert fetch_crds.fetch_crds(lock, dest) == []


def test_checksum_mismatch_writes_nothing(
    mirror: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, root = mirror
    (root / "a.example.io_things.yaml").write_bytes(b"tampered\n")
    lock = _lock(tmp_path / "crds.lock", {"a.example.io_things.yaml": b"original\n"}, url)
    dest = tmp_path / "cache"

    assert fetch_crds.main(["--lock", str(lock), "--dest", str(dest)]) == 1
    assert list(dest.iterdir()) == []
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: a.example.io_things.yaml") and "expected" in err and "\n" not in err


def test_unreachable_source_is_one_line(
    mirror: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = mirror
    lock = _lock(tmp_path / "crds.lock", {"missing.yaml": b"x\n"}, url)
    assert fetch_crds.main(["--lock", str(lock), "--dest", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not download") and "\n" not in err
