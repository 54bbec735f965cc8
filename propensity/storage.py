"""Shared records as objects under one URI: a local folder or `s3://bucket/prefix` on any
S3-compatible store (AWS, MinIO, SeaweedFS), through fsspec.

What lives here is small and written whole (retraining history, online push records, reports,
closed inference-log segments), so every write is one object: a PUT on S3 is atomic, and on a
local disk the object is written beside its target and renamed. Credentials come from the usual
AWS_* variables (the `propensity-secrets` Secret on a cluster); endpoint and region from settings.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from propensity.errors import PropensityError
from propensity.settings import Settings


class Storage:
    def __init__(self, settings: Settings) -> None:
        self.url = settings.storage_url
        self.fs: fsspec.AbstractFileSystem
        if self.url.startswith("s3://"):
            import s3fs

            client: dict[str, str] = {}
            if settings.s3_endpoint_url:
                client["endpoint_url"] = settings.s3_endpoint_url
            if settings.s3_region:
                client["region_name"] = settings.s3_region
            self.endpoint = settings.s3_endpoint_url or "AWS"
            self.fs = s3fs.S3FileSystem(
                client_kwargs=client,
                config_kwargs={"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 3}},
                use_listings_cache=False,
                skip_instance_cache=True,
            )
            self.root = self.url.removeprefix("s3://")
        else:
            self.endpoint = "local disk"
            self.fs = LocalFileSystem(auto_mkdir=True)
            self.root = self.url

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def check(self) -> None:
        """One line naming the store when it cannot be reached or written, before anything is written."""
        probe = f".probe-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(self._path(probe), b"")
            self.fs.rm_file(self._path(probe))
        except Exception as error:  # botocore, aiohttp and OS errors all mean the same to the user
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise PropensityError(f"cannot write to storage {self.url} ({self.endpoint}): {reason}") from error

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(self._path(key)))
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace the object at `key` whole: readers see the old or the new content, never a mix."""
        target = self._path(key)
        if isinstance(self.fs, LocalFileSystem):
            tmp = f"{target}.{uuid.uuid4().hex}.tmp"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, target)
        else:
            self.fs.pipe_file(target, data)

    def delete(self, key: str) -> None:
        """Remove the object at `key` if it is there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def read_json(self, key: str, default: Any = None) -> Any:
        data = self.read_bytes(key)
        return default if data is None else json.loads(data)

    def write_json(self, key: str, content: Any) -> None:
        self.write_bytes(key, json.dumps(content, indent=1, sort_keys=True, default=str).encode())

    def keys(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix/`, sorted (temporary objects of unfinished local writes left out)."""
        base = self._path(prefix)
        if not self.fs.exists(base):
            return
        for path in sorted(self.fs.find(base)):
            if not path.endswith(".tmp"):
                yield path[len(self.root) + 1 :] if path.startswith(self.root) else path
