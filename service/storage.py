"""The artifact store: data sets, models and checkpoints as objects under one fsspec URL.

`file://` (under the data directory) by default, `s3://bucket/prefix` in production; the S3
endpoint comes from the standard `AWS_ENDPOINT_URL` (MinIO in docker-compose). Object keys are
made from ids and hashes only, never from names that users choose, and checked here so that no
key can reach outside the store's root. Every write returns the object's sha256, which the
caller records in the database; every read checks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from service.config import Settings

CHUNK = 1 << 20
KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class StorageError(Exception):
    """An object could not be stored or read."""


class ArtifactMissing(StorageError):
    pass


class ChecksumMismatch(StorageError):
    pass


@dataclass(frozen=True)
class StoredObject:
    key: str
    uri: str
    sha256: str
    size: int

    def manifest_entry(self) -> dict[str, Any]:
        return {"key": self.key, "sha256": self.sha256, "size": self.size}


def dataset_prefix(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def dataset_key(dataset_id: str, fmt: str) -> str:
    return f"{dataset_prefix(dataset_id)}/data.{fmt}"


def model_prefix(model_id: str) -> str:
    return f"models/{model_id}"


def checkpoint_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoints"


def check_key(key: str) -> str:
    """A relative key of plain path segments: no `..`, no leading `/`, no hidden segments."""
    if not KEY.match(key) or len(key) > 500:
        raise ValueError(f"invalid object key {key!r}")
    return key


def storage_options(uri: str) -> dict[str, Any]:
    """fsspec options for `uri`: for S3 the endpoint and region from the AWS_* environment."""
    if not uri.startswith(("s3://", "s3a://")):
        return {"auto_mkdir": True} if uri.startswith("file://") or "://" not in uri else {}
    client: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    # Listings are read right after writes (dedupe, deletes): never serve them from a cache.
    return {"client_kwargs": client, "use_listings_cache": False, "skip_instance_cache": True}


class ArtifactStore:
    """Objects under one root URL, addressed by relative keys like `models/<id>/model.keras`."""

    def __init__(self, uri: str, options: dict[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/")
        fs, root = url_to_fs(self.uri, **(storage_options(uri) if options is None else options))
        self.fs: AbstractFileSystem = fs
        self.root = root.rstrip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(settings.resolved_artifact_uri)

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def url(self, key: str) -> str:
        return f"{self.uri}/{check_key(key)}"

    # --- writing -------------------------------------------------------------------------------

    def put_stream(self, source: BinaryIO, key: str) -> StoredObject:
        """Copy a readable binary stream to `key`, hashing it on the way."""
        digest, size = hashlib.sha256(), 0
        path = self._path(key)
        try:
            with self.fs.open(path, "wb") as target:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    target.write(chunk)
        except BaseException:
            self._remove_quietly(path)
            raise
        return StoredObject(key, self.url(key), digest.hexdigest(), size)

    def put_file(self, local: Path, key: str) -> StoredObject:
        with Path(local).open("rb") as source:
            return self.put_stream(source, key)

    def put_bytes(self, data: bytes, key: str) -> StoredObject:
        import io

        return self.put_stream(io.BytesIO(data), key)

    # --- reading -------------------------------------------------------------------------------

    def download(self, key: str, local: Path, *, sha256: str) -> Path:
        """Copy `key` to the local file and check its sha256 against the recorded one."""
        path = self._path(key)
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        try:
            with self.fs.open(path, "rb") as source, local.open("wb") as target:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    target.write(chunk)
        except FileNotFoundError as exc:
            local.unlink(missing_ok=True)
            raise ArtifactMissing(f"stored object {self.url(key)} is missing") from exc
        self._verify(key, digest.hexdigest(), sha256, local)
        return local

    def read_bytes(self, key: str, *, sha256: str) -> bytes:
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except FileNotFoundError as exc:
            raise ArtifactMissing(f"stored object {self.url(key)} is missing") from exc
        self._verify(key, hashlib.sha256(data).hexdigest(), sha256, None)
        return data

    def _verify(self, key: str, actual: str, expected: str, local: Path | None) -> None:
        if actual != expected:
            if local is not None:
                local.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"stored object {self.url(key)} is corrupt: its sha256 is {actual}, but "
                f"{expected} was recorded when it was stored; restore it from a backup or "
                "store it again"
            )

    def download_files(self, manifest: dict[str, dict[str, Any]], folder: Path) -> dict[str, Path]:
        """Fetch every file of a manifest `{name: {"key", "sha256", ...}}` into `folder`,
        each checked; `{name: local path}` (local names are the keys' last segments)."""
        return {
            name: self.download(
                entry["key"], Path(folder) / entry["key"].rsplit("/", 1)[-1], sha256=entry["sha256"]
            )
            for name, entry in manifest.items()
        }

    # --- listing and deleting ------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (all keys when empty), sorted."""
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        try:
            found: Iterable[str] = self.fs.find(base)
        except FileNotFoundError:
            return []
        start = len(self.root) + 1
        return sorted(path[start:] for path in found if path.startswith(self.root + "/"))

    def delete(self, key: str) -> None:
        self._remove_quietly(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix/` (a folder of keys)."""
        base = self._path(prefix.rstrip("/"))
        for key in self.list(prefix.rstrip("/")):
            self.fs.rm_file(self._path(key))
        if self.fs.exists(base) and self.fs.isdir(base):  # local: the empty folders
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(base, recursive=True)

    def _remove_quietly(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)
