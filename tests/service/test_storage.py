"""The artifact store, on the local file system and against a real S3 HTTP server (moto)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings, get_settings
from service.storage import (
    ArtifactMissing,
    ArtifactStore,
    ChecksumMismatch,
    check_key,
    storage_options,
)
from tests.s3server import S3Server, running_s3_server, use_s3


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


@pytest.fixture
def file_store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore((tmp_path / "artifacts").as_uri())


@pytest.fixture
def s3_store(
    s3_server: S3Server, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> ArtifactStore:
    use_s3(monkeypatch, s3_server, s3_server.new_bucket())
    get_settings.cache_clear()
    return ArtifactStore.from_settings(get_settings())


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")  # type: ignore[no-any-return]


def test_default_store_is_file_under_the_data_dir(settings: Settings) -> None:
    store = ArtifactStore.from_settings(settings)
    assert store.uri == (settings.data_dir / "artifacts").resolve().as_uri()
    store.put_bytes(b"x", "a/b.bin")
    assert (settings.data_dir / "artifacts" / "a" / "b.bin").read_bytes() == b"x"


def test_s3_endpoint_comes_from_aws_endpoint_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    options = storage_options("s3://bucket/prefix")
    assert options["client_kwargs"]["endpoint_url"] == "http://minio:9000"


def test_put_download_list_delete(store: ArtifactStore, tmp_path: Path) -> None:
    payload = b"0123456789" * 200_000  # 2 MB: more than one chunk
    local = tmp_path / "in.bin"
    local.write_bytes(payload)
    stored = store.put_file(local, "models/m1/model.keras")
    assert stored.sha256 == hashlib.sha256(payload).hexdigest()
    assert stored.size == len(payload)
    assert stored.uri == f"{store.uri}/models/m1/model.keras"
    store.put_bytes(b"{}", "models/m1/meta.json")
    store.put_bytes(b"other", "models/m10/model.keras")
    assert store.list("models/m1") == ["models/m1/meta.json", "models/m1/model.keras"]
    out = store.download("models/m1/model.keras", tmp_path / "out.bin", sha256=stored.sha256)
    assert out.read_bytes() == payload
    assert store.read_bytes("models/m1/meta.json", sha256=hashlib.sha256(b"{}").hexdigest())
    store.delete_prefix("models/m1")
    assert store.list() == ["models/m10/model.keras"]
    assert not store.exists("models/m1/model.keras")


def test_a_changed_object_fails_its_sha256_check(store: ArtifactStore, tmp_path: Path) -> None:
    stored = store.put_bytes(b"original", "datasets/d1/data.csv")
    store.put_bytes(b"tampered", "datasets/d1/data.csv")  # as if the bytes rotted
    target = tmp_path / "data.csv"
    with pytest.raises(ChecksumMismatch, match=r"is corrupt: its sha256 is .* was recorded"):
        store.download("datasets/d1/data.csv", target, sha256=stored.sha256)
    assert not target.exists()  # a bad copy is not left behind
    with pytest.raises(ChecksumMismatch):
        store.read_bytes("datasets/d1/data.csv", sha256=stored.sha256)


def test_a_missing_object_says_so(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactMissing, match="is missing"):
        store.download("models/none/model.keras", tmp_path / "x", sha256="0" * 64)


def test_download_files_checks_every_manifest_entry(store: ArtifactStore, tmp_path: Path) -> None:
    manifest = {
        "model": store.put_bytes(b"weights", "models/m2/model.keras").manifest_entry(),
        "scaler": store.put_bytes(b"{}", "models/m2/scaler.json").manifest_entry(),
    }
    local = store.download_files(manifest, tmp_path / "m2")
    assert local["model"].read_bytes() == b"weights"
    assert local["scaler"].name == "scaler.json"


def test_s3_objects_live_in_the_bucket(s3_store: ArtifactStore, s3_server: S3Server) -> None:
    s3_store.put_bytes(b"abc", "jobs/j1/checkpoints/1/state.npz")
    bucket = s3_store.root.split("/", 1)[0]
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["artifacts/jobs/j1/checkpoints/1/state.npz"]
    s3_store.delete_prefix("jobs/j1")
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


@pytest.mark.parametrize(
    "key", ["../escape", "/etc/passwd", "a/../../b", "a//b", ".hidden", "a/.git/x", "a b", ""]
)
def test_keys_cannot_leave_the_store(key: str, file_store: ArtifactStore) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        check_key(key)
    with pytest.raises(ValueError):
        file_store.put_bytes(b"x", key)
