"""Data sets over HTTP: built-ins, uploads of every format, dedupe, limits, bad input, deletion."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ml.core.datasets import builtin_names
from service.config import Settings, get_settings
from service.db.tables import Dataset
from service.storage import ArtifactStore
from tests.conftest import RecordingPublisher, submit
from tests.s3server import S3Server, running_s3_server, use_s3

CSV = b"a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n"


def npy(array: np.ndarray, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def parquet(**columns: list[Any]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def upload(client: TestClient, content: bytes, filename: str = "data.csv", **fields: str) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=fields)


def rows(client: TestClient) -> list[Dataset]:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        return list(session.scalars(select(Dataset)))


def store_keys(settings: Settings) -> list[str]:
    return ArtifactStore.from_settings(settings).list()


def test_builtins_are_listed_with_shape_and_label_meaning(client: TestClient) -> None:
    page = client.get("/v1/datasets").json()
    builtins = {d["id"]: d for d in page["items"] if d["format"] == "builtin"}
    assert set(builtins) == {f"builtin:{n}" for n in builtin_names()}
    assert {"builtin:swiss_roll", "builtin:swiss_roll_3d", "builtin:eight_gaussians"} <= set(
        builtins
    )
    assert builtins["builtin:digits"]["shape"] == [1797, 8, 8, 1]
    assert builtins["builtin:breast_cancer"]["features"] == 30
    assert "malignant" in builtins["builtin:breast_cancer"]["labels"]
    for item in builtins.values():
        assert item["description"] and item["labels"] and item["dtype"]
    assert page["next_cursor"] is None


def test_builtin_detail_has_statistics_preview_and_label_counts(client: TestClient) -> None:
    detail = client.get("/v1/datasets/builtin:breast_cancer").json()
    assert len(detail["statistics"]) == 30 and detail["features_shown"] == 30
    assert len(detail["preview"]["x"]) == 5 and len(detail["preview"]["x"][0]) == 30
    assert detail["label_summary"]["counts"] == {"0": 357, "1": 212}  # 212 malignant
    digits = client.get("/v1/datasets/builtin:digits").json()
    assert digits["features_total"] == 64
    missing = client.get("/v1/datasets/builtin:mnist")
    assert missing.status_code == 404 and "builtin:digits" in missing.json()["error"]["message"]


def test_csv_upload_with_label_column(client: TestClient, settings: Settings) -> None:
    response = upload(client, CSV, "points.csv", label_column="label")
    assert response.status_code == 201, response.text
    data = response.json()
    assert response.headers["location"] == f"/v1/datasets/{data['id']}"
    assert data["name"] == "points" and data["format"] == "csv"
    assert (data["rows"], data["features"], data["shape"]) == (4, 2, [4, 2])
    assert data["has_labels"] and data["label_column"] == "label" and data["dtype"] == "float64"
    assert len(data["sha256"]) == 64
    detail = client.get(f"/v1/datasets/{data['id']}").json()
    a = detail["statistics"][0]
    assert a["name"] == "a" and a["mean"] == 4.0 and (a["min"], a["max"]) == (1.0, 7.0)
    assert a["std"] == pytest.approx(np.std([1, 3, 5, 7]))
    assert detail["preview"] == {"x": [[1, 2], [3, 4], [5, 6], [7, 8]], "y": [0, 1, 0, 1]}
    assert store_keys(settings) == [f"datasets/{data['id']}/data.csv"]


@pytest.mark.parametrize(
    ("filename", "content", "shape", "has_labels"),
    [
        ("x.npy", npy(np.arange(12, dtype=np.float32).reshape(3, 2, 2)), [3, 2, 2], False),
        ("xy.npz", npz(x=np.ones((5, 3)), y=np.arange(5)), [5, 3], True),
        ("t.parquet", parquet(a=[1.0, 2.0], b=[3, 4]), [2, 2], False),
        ("noext", npy(np.zeros((2, 2))), [2, 2], False),  # recognised by its magic bytes
    ],
)
def test_other_formats(
    client: TestClient, filename: str, content: bytes, shape: list[int], has_labels: bool
) -> None:
    response = upload(client, content, filename)
    assert response.status_code == 201, response.text
    assert response.json()["shape"] == shape and response.json()["has_labels"] is has_labels


def test_parquet_with_text_labels(client: TestClient) -> None:
    content = parquet(x1=[0.1, 0.2, 0.3], diagnosis=["M", "B", "M"])
    data = upload(client, content, "bc.parquet", label_column="diagnosis").json()
    assert data["labels"] == "column 'diagnosis' (classes: B=0, M=1)"
    detail = client.get(f"/v1/datasets/{data['id']}").json()
    assert detail["preview"]["y"] == [1, 0, 1]


def test_identical_content_is_stored_once(client: TestClient, settings: Settings) -> None:
    first = upload(client, CSV, "a.csv", label_column="label")
    again = upload(client, CSV, "renamed.csv", name="another name", label_column="label")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(rows(client)) == 1 and len(store_keys(settings)) == 1
    # Other labels make another data set.
    unlabelled = upload(client, CSV, "a.csv")
    assert unlabelled.status_code == 201 and unlabelled.json()["id"] != first.json()["id"]
    assert len(store_keys(settings)) == 2


def test_pages_run_through_builtins_then_uploads(client: TestClient) -> None:
    uploaded = [upload(client, f"a\n{i}\n".encode(), f"u{i}.csv").json()["id"] for i in range(3)]
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/datasets", params=params).json()
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    builtins = [f"builtin:{n}" for n in builtin_names()]
    assert seen == builtins + uploaded[::-1]
    bad = client.get("/v1/datasets", params={"cursor": "garbage"})
    assert bad.status_code == 422


def test_delete_removes_row_and_object(client: TestClient, settings: Settings) -> None:
    data = upload(client, CSV).json()
    assert client.delete(f"/v1/datasets/{data['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{data['id']}").status_code == 404
    assert store_keys(settings) == [] and rows(client) == []
    assert client.delete(f"/v1/datasets/{data['id']}").status_code == 404
    builtin = client.delete("/v1/datasets/builtin:digits")
    assert builtin.status_code == 409 and builtin.json()["error"]["code"] == "unsupported_operation"


def test_a_data_set_in_use_cannot_be_deleted(
    client: TestClient, publisher: RecordingPublisher, settings: Settings
) -> None:
    data = upload(client, CSV, label_column="label").json()
    publisher.run_inline = False  # the job stays queued
    job = submit(client, {"kind": "cooling", "dataset": data["id"]})
    response = client.delete(f"/v1/datasets/{data['id']}")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "invalid_state" and job["id"] in error["message"]
    assert error["details"]["job_ids"] == [job["id"]]
    assert store_keys(settings) != []
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/datasets/{data['id']}").status_code == 204


@pytest.mark.parametrize("ref", ["builtin:mnist", "0b7e2d64-8a55-4a49-9c8f-3f2d8c1e9a10", "x"])
def test_submit_refuses_an_unknown_data_set(client: TestClient, ref: str) -> None:
    response = client.post("/v1/jobs", json={"kind": "cooling", "dataset": ref})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error" and error["details"][0]["field"] == "body.dataset"
    assert ref in error["message"] and "builtin:digits" in error["message"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_submit_accepts_builtins_and_uploads(client: TestClient) -> None:
    data = upload(client, CSV).json()
    for ref in ("builtin:moons", data["id"]):
        assert client.post("/v1/jobs", json={"kind": "cooling", "dataset": ref}).status_code == 202


SHAPE_MISMATCHES = [
    ({"kind": "kmeans", "params": {"n_clusters": 5}}, "n_clusters = 5 is more than the 4 rows"),
    ({"kind": "annealing", "params": {"max_clusters": 5}}, "max_clusters = 5 is more than the 4"),
    ({"kind": "dec", "params": {"n_clusters": 5}}, "n_clusters = 5 is more than the 4 rows"),
    ({"kind": "dcn", "params": {"n_clusters": 5}}, "n_clusters = 5 is more than the 4 rows"),
    ({"kind": "hierarchical", "params": {"n_clusters": 5}}, "n_clusters = 5 is more than the 4"),
    (
        {"kind": "pca", "params": {"n_components": 3}},
        "n_components = 3 is more than the 2 features",
    ),
]


@pytest.mark.parametrize(("spec", "message"), SHAPE_MISMATCHES)
def test_submit_checks_a_job_against_the_shape_of_its_data(
    client: TestClient, spec: dict[str, Any], message: str
) -> None:
    """An upload's shape is in the database: a job that cannot run on it is a 422 at submit,
    like one on a built-in, not a job that fails later."""
    upload_id = upload(client, CSV, label_column="label").json()["id"]  # 4 rows, 2 features
    response = client.post("/v1/jobs", json={**spec, "dataset": upload_id})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"][0]["field"] == "body.params" and message in error["message"]
    fewer = {name: 2 for name in spec["params"]}
    fits = client.post("/v1/jobs", json={**spec, "params": fewer, "dataset": upload_id})
    assert fits.status_code == 202, fits.text
    # The same check on a built-in (wine: 178 rows, 13 features), made with the spec.
    over = {name: 14 if name == "n_components" else 179 for name in spec["params"]}
    refused = client.post("/v1/jobs", json={**spec, "params": over, "dataset": "builtin:wine"})
    assert refused.status_code == 422
    assert refused.json()["error"]["details"][0]["field"] == "body.params"
    assert "more than the 178 rows" in refused.text or "more than the 13 features" in refused.text


BAD_INPUTS = [
    ("data.xlsx", b"PK\x05\x06 not really", {}, "unsupported file format '.xlsx'"),
    ("data.csv", b"", {}, "the file is empty"),
    ("data.csv", b"a,b\n", {}, "header but no data rows"),
    ("data.csv", b"1,2\n3,4\n", {}, "looks like data, not a header"),
    ("data.csv", b"a,b\n1,2\n3,red\n", {}, "column 'b' is not numeric: 'red' at line 3"),
    ("data.csv", b"a,b\n1,2\n3,nan\n", {}, "column 'b' has a missing or non-finite value"),
    ("data.csv", b"a,b\n1,inf\n", {}, "non-finite value (empty, NaN or inf) in data row 1"),
    ("data.csv", b"a,b\n1,\n", {}, "missing or non-finite"),
    ("data.csv", b"a,b\n1,2\n3\n", {}, "ragged rows: line 3 has 1 values"),
    ("data.csv", CSV, {"label_column": "target"}, "label column 'target' is not in the CSV"),
    ("d.npy", npy(np.array([{"a": 1}], dtype=object), allow_pickle=True), {}, "Python objects"),
    ("d.npy", b"\x93NUMPY garbage", {}, "not a readable .npy file"),
    ("d.npy", npy(np.array([[1.0, np.nan]])), {}, "non-finite"),
    ("d.npy", npy(np.ones((2, 2), dtype=np.complex64)), {}, "only real numbers"),
    ("d.npy", npy(np.zeros((0, 3))), {}, "no rows"),
    ("d.npz", npz(data=np.ones((2, 2))), {}, "needs an array named x"),
    ("d.npz", npz(x=np.ones((3, 2)), y=np.ones(2)), {}, "one value per row (3)"),
    ("d.npz", npz(x=np.ones((3, 2))), {"label_column": "y"}, "label_column applies to CSV"),
    ("d.parquet", parquet(a=[1.0], s=["x"]), {}, "column 's' is not numeric"),
    ("d.parquet", parquet(a=[1.0, None]), {}, "column 'a' has 1 missing values"),
    ("d.parquet", b"PAR1 broken", {}, "not a readable Parquet file"),
]


@pytest.mark.parametrize(("filename", "content", "fields", "message"), BAD_INPUTS)
def test_bad_input_is_refused_and_leaves_nothing(
    client: TestClient,
    settings: Settings,
    filename: str,
    content: bytes,
    fields: dict[str, str],
    message: str,
) -> None:
    response = upload(client, content, filename, **fields)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert message in error["message"]
    assert rows(client) == [] and store_keys(settings) == []
    assert list((settings.data_dir / "tmp").glob("*")) == []  # the spooled upload is gone


def test_a_request_that_is_not_a_multipart_upload(client: TestClient) -> None:
    assert client.post("/v1/datasets", json={"file": "x"}).status_code == 422
    no_file = client.post("/v1/datasets", data={"name": "x"}, files={"other": ("a", b"1")})
    assert no_file.status_code == 422 and "no file" in no_file.json()["error"]["message"]


def test_names_are_labels_and_keys_come_from_ids(client: TestClient, settings: Settings) -> None:
    data = upload(client, CSV, "../../../escape.csv", name="../../etc/passwd").json()
    assert data["name"] == "../../etc/passwd"
    assert store_keys(settings) == [f"datasets/{data['id']}/data.csv"]
    root = settings.data_dir.resolve()
    written = {p.relative_to(root).parts[0] for p in root.rglob("*") if p.is_file()}
    assert written <= {"thermoml.db", "thermoml.db-wal", "thermoml.db-shm", "artifacts"}


def test_a_failure_after_storing_leaves_no_object(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.db import datasets as repo

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(repo, "create", broken)
    with TestClient(client.app, raise_server_exceptions=False) as failing:
        response = upload(failing, CSV)
    assert response.status_code == 500
    assert rows(client) == [] and store_keys(settings) == []


@pytest.fixture
def small_limit(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from service.main import create_app

    monkeypatch.setenv("THERMOML_MAX_UPLOAD_BYTES", "1000")
    get_settings.cache_clear()
    app = create_app(get_settings(), reconcile=False)
    with TestClient(app) as client:
        yield client


def test_an_upload_over_the_limit_is_413(small_limit: TestClient, settings: Settings) -> None:
    content = b"a,b\n" + b"1,2\n" * 500  # 2004 bytes
    response = upload(small_limit, content)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and "1000 bytes" in error["message"]
    assert rows(small_limit) == [] and store_keys(settings) == []
    assert list((settings.data_dir / "tmp").glob("*")) == []
    assert upload(small_limit, b"a,b\n1,2\n").status_code == 201  # small files still pass


def test_the_limit_stops_reading_the_stream(tmp_path: Path) -> None:
    """The reader answers 413 once the limit is passed, without consuming the rest."""
    from starlette.requests import Request

    from service.api import uploads
    from service.errors import ServiceError

    boundary = b"XyZ"
    head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
    chunks = [head] + [b"1,2,3,4\n" * 1024] * 1000  # ~8 MB offered
    sent = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        sent += 1
        more = sent < len(chunks)
        return {"type": "http.request", "body": chunks[sent - 1], "more_body": more}

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary)],
    }
    reading = uploads.receive(Request(scope, receive), limit=100_000, folder=tmp_path)
    with pytest.raises(ServiceError) as raised:
        asyncio.run(reading)
    assert raised.value.code == "payload_too_large"
    assert sent < 20  # stopped after ~100 kB, not after 8 MB
    assert list(tmp_path.iterdir()) == []


def test_a_declared_length_over_the_limit_is_refused_at_once(small_limit: TestClient) -> None:
    response = small_limit.post(
        "/v1/datasets",
        content=b"x" * 10,
        headers={
            "content-type": "multipart/form-data; boundary=b",
            "content-length": str(50 << 20),
        },
    )
    assert response.status_code == 413


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


def test_uploads_to_an_s3_store(
    s3_server: S3Server, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.main import create_app

    bucket = s3_server.new_bucket()
    use_s3(monkeypatch, s3_server, bucket)
    get_settings.cache_clear()
    with TestClient(create_app(get_settings(), reconcile=False)) as client:
        data = upload(client, CSV, label_column="label").json()
        listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
        assert [o["Key"] for o in listed] == [f"artifacts/datasets/{data['id']}/data.csv"]
        assert client.delete(f"/v1/datasets/{data['id']}").status_code == 204
    assert s3_server.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0
