"""Download the pinned upstream CRD schemas (manifests/crds.lock) into a cache, checking each sha256.

`make crds` runs this once on a machine with internet access; the manifest tests then validate the
KServe and Spark Operator resources against the cached files. Files already cached with the right
checksum are not downloaded again. A checksum mismatch or a failed download writes nothing for that
file and exits non-zero with one line saying which file and why.

    python manifests/fetch_crds.py [--lock manifests/crds.lock] [--dest .cache/crds]

Set PROPENSITY_CRD_MIRROR to a base URL to fetch the same file names from a mirror instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LOCK = REPO / "manifests" / "crds.lock"
DEFAULT_DEST = REPO / ".cache" / "crds"


class FetchError(Exception):
    pass


def read_lock(path: Path) -> list[tuple[str, str, str]]:
    """(file name, sha256, url) for every pinned schema."""
    pins = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3:
            raise FetchError(f"{path}:{number}: expected 'file sha256 url', found {line!r}")
        pins.append((fields[0], fields[1], fields[2]))
    return pins


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(url: str, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except OSError as exc:
        raise FetchError(f"could not download {url}: {exc}") from exc


def fetch_crds(lock: Path, dest: Path, mirror: str | None = None) -> list[str]:
    """Make `dest` hold every pinned file with its pinned checksum; return the names downloaded."""
    dest.mkdir(parents=True, exist_ok=True)
    downloaded = []
    for name, expected, url in read_lock(lock):
        target = dest / name
        if target.is_file() and sha256(target.read_bytes()) == expected:
            continue
        source = f"{mirror.rstrip('/')}/{name}" if mirror else url
        data = fetch(source)
        if (actual := sha256(data)) != expected:
            raise FetchError(f"{name} from {source} has sha256 {actual}, expected {expected}; nothing written")
        with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{name}.", delete=False) as tmp:
            tmp.write(data)
        os.replace(tmp.name, target)
        downloaded.append(name)
    return downloaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    args = parser.parse_args(argv)
    try:
        downloaded = fetch_crds(args.lock, args.dest, os.environ.get("PROPENSITY_CRD_MIRROR"))
    except (FetchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"CRD schemas in {args.dest}: {len(downloaded)} downloaded, the rest already cached and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
