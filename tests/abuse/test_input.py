"""Never a 500 from input: a NUL character in any id, name, filter, header, JSON string or form
field, an out-of-range number in a query, a cursor this service never issued. Each is a 422
naming the field, before any database work, on SQLite and on PostgreSQL (which refuses NUL in
text: every case below answered 500 there before the checks), and the API keeps serving."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from migrations import upgrade
from service.config import Settings
from service.main import create_app
from tests.abuse.helpers import assert_error, assert_still_serving
from tests.conftest import RecordingPublisher
from tests.pg import scratch_database

COOLING = {"kind": "cooling", "params": {"method": "rk4"}}
NUL = "a%00b"
CSV = b"a,b\n1,2\n3,4\n5,6\n"
AWARE = "2024-01-01T00:00:00+00:00"

# (method, path): every route that takes an id, a reference or a name in its path.
NUL_IN_PATH = [
    ("get", f"/v1/jobs/{NUL}"),
    ("post", f"/v1/jobs/{NUL}/cancel"),
    ("get", f"/v1/jobs/{NUL}/metrics"),
    ("get", f"/v1/jobs/{NUL}/metrics.png"),
    ("get", f"/v1/jobs/{NUL}/events"),
    ("get", f"/v1/models/{NUL}"),
    ("delete", f"/v1/models/{NUL}"),
    ("post", f"/v1/models/{NUL}/score"),
    ("get", f"/v1/models/{NUL}/samples.png"),
    ("get", f"/v1/datasets/{NUL}"),
    ("delete", f"/v1/datasets/{NUL}"),
    ("get", f"/jobs/{NUL}"),
    ("get", f"/models/{NUL}"),
]
# (path with query, the field the answer names): every filter and cursor.
NUL_IN_QUERY = [
    (f"/v1/jobs?kind={NUL}", "query.kind"),
    (f"/v1/jobs?cursor={NUL}", "query.cursor"),
    (f"/v1/models?name={NUL}", "query.name"),
    (f"/v1/models?kind={NUL}", "query.kind"),
    (f"/v1/datasets?cursor={NUL}", "query.cursor"),
    (f"/v1/jobs/x/metrics?names={NUL}", "query.names"),
    (f"/?kind={NUL}", "query.kind"),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def client(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[TestClient]:
    def serve(chosen: Settings) -> Iterator[TestClient]:
        app = create_app(chosen, reconcile=False)
        app.state.publisher = RecordingPublisher(run_inline=False)  # jobs stay queued
        with TestClient(app, raise_server_exceptions=False) as test_client:
            yield test_client
            assert_still_serving(test_client)

    if request.param == "sqlite":
        yield from serve(settings)
        return
    with scratch_database() as url:
        upgrade(url)
        yield from serve(settings.model_copy(update={"database_url": url}))


def field_of(error: dict[str, Any]) -> str:
    """The field the error names first (an unknown kind is refused as such, NUL or not)."""
    assert "NUL" in error["message"] or "unknown kind" in error["message"], error
    return str(error["details"][0]["field"])


@pytest.mark.parametrize(("method", "path"), NUL_IN_PATH)
def test_nul_in_a_path_is_422(client: TestClient, method: str, path: str) -> None:
    error = assert_error(client.request(method, path), 422, "validation_error")
    assert field_of(error) == "path"


@pytest.mark.parametrize(("path", "field"), NUL_IN_QUERY)
def test_nul_in_a_query_parameter_is_422(client: TestClient, path: str, field: str) -> None:
    error = assert_error(client.get(path), 422, "validation_error")
    assert field_of(error) == field


def test_nul_in_an_idempotency_key_is_422(client: TestClient) -> None:
    response = client.post("/v1/jobs", json=COOLING, headers={"Idempotency-Key": "k\x00"})
    error = assert_error(response, 422, "validation_error")
    assert field_of(error) == "header.idempotency-key"
    assert client.get("/v1/jobs").json()["items"] == []  # refused before the row was written


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({**COOLING, "name": "a\x00b"}, "body.name"),
        ({**COOLING, "dataset": "builtin:\x00"}, "body.dataset"),
        ({"kind": "cooling\x00"}, "body.kind"),
        ({**COOLING, "params": {"method\x00": "rk4"}}, "body.params"),
        ({**COOLING, "resources": {"queue": ["\x00"]}}, "body.resources.queue.0"),
    ],
)
def test_nul_in_a_job_spec_is_422(client: TestClient, spec: dict[str, Any], field: str) -> None:
    error = assert_error(client.post("/v1/jobs", json=spec), 422, "validation_error")
    assert field_of(error) == field


def test_nul_in_a_generate_body_is_422(client: TestClient) -> None:
    response = client.post("/v1/models/m/generate", json={"sampler": "ddpm\x00"})
    error = assert_error(response, 422, "validation_error")
    assert field_of(error) == "body.sampler"


@pytest.mark.parametrize("field", ["name", "label_column"])
def test_nul_in_an_upload_field_is_422(client: TestClient, field: str) -> None:
    response = client.post("/v1/datasets", files={"file": ("a.csv", CSV)}, data={field: "a\x00b"})
    error = assert_error(response, 422, "validation_error")
    assert field_of(error) == f"form.{field}"
    listed = client.get("/v1/datasets", params={"limit": 500}).json()["items"]
    assert all(item["id"].startswith("builtin:") for item in listed)  # nothing was stored


def test_nul_in_an_upload_file_name_is_422(client: TestClient) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a\x00.csv"\r\n'
        f"Content-Type: text/csv\r\n\r\n{CSV.decode()}\r\n--{boundary}--\r\n"
    ).encode()
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    response = client.post("/v1/datasets", content=body, headers=headers)
    error = assert_error(response, 422, "validation_error")
    assert field_of(error) == "form.file.filename"


@pytest.mark.parametrize("since", [str(10**23), str(-(10**23)), str(2**63)])
def test_since_step_beyond_a_bigint_is_422(client: TestClient, since: str) -> None:
    job = client.post("/v1/jobs", json=COOLING).json()
    response = client.get(f"/v1/jobs/{job['id']}/metrics", params={"since_step": since})
    assert_error(response, 422, "validation_error")
    largest = client.get(f"/v1/jobs/{job['id']}/metrics", params={"since_step": 2**62})
    assert largest.status_code == 200, largest.text


def test_last_event_id_beyond_a_bigint_is_422(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=COOLING).json()
    client.post(f"/v1/jobs/{job['id']}/cancel")  # an accepted stream ends at once
    huge = "9" * 30
    for params, headers in (({"last_event_id": huge}, {}), ({}, {"Last-Event-ID": huge})):
        response = client.get(f"/v1/jobs/{job['id']}/events", params=params, headers=headers)
        assert_error(response, 422, "validation_error")


def cursor(payload: Any) -> str:
    raw = json.dumps(payload, allow_nan=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/jobs", ["2024-01-01T00:00:00", "id"]),  # a naive time
        ("/v1/models", ["2024-01-01T00:00:00", "id"]),
        ("/v1/datasets", ["upload", "2024-01-01T00:00:00", "id"]),
        ("/v1/datasets", ["builtin", float("inf")]),
        ("/v1/datasets", ["builtin", -1]),
    ],
)
def test_cursors_this_service_never_issued_are_422(
    client: TestClient, path: str, payload: list[Any]
) -> None:
    client.post("/v1/jobs", json=COOLING)  # something to page over
    response = client.get(path, params={"cursor": cursor(payload)})
    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/models", "/v1/datasets"])
def test_a_nul_inside_a_cursor_is_never_a_500(client: TestClient, path: str) -> None:
    """Well formed but holding a NUL: SQLite compares it (no row after it: 200); PostgreSQL
    refuses it, and the database's DataError is answered 422 (the backstop)."""
    tag = ["upload"] if path == "/v1/datasets" else []
    response = client.get(path, params={"cursor": cursor([*tag, AWARE, "a\x00b"])})
    app: Any = client.app
    if app.state.settings.resolved_database_url.startswith("postgresql"):
        assert_error(response, 422, "validation_error")
    else:
        assert response.status_code == 200, response.text
