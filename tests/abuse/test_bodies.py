"""Request bodies: the size limit holds while a body streams in (413, for a chunked body too,
with nothing past the limit read or kept), JSON bodies have their own smaller limit, and JSON
that is nested too deep or holds a huge integer is a 422 naming the problem, never a 500."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.abuse.helpers import assert_error, assert_still_serving, peak_rss, reset_peak, rss
from tests.conftest import RecordingPublisher

MiB = 1 << 20
CHUNK = 64 * 1024
COOLING = {"kind": "cooling", "params": {"method": "rk4"}}
HUGE_INT = b"9" * 401


def chunks(total: int) -> Iterator[bytes]:
    """A JSON job spec of `total` bytes (a long name), made as it is sent."""
    yield b'{"kind": "cooling", "name": "'
    for _ in range(total // CHUNK):
        yield b"x" * CHUNK
    yield b'"}'


def post_chunked(app: Any, path: str, body: Iterator[bytes], content_type: bytes) -> tuple:
    """POST `body` to the ASGI app as a chunked request (no Content-Length), chunk by chunk as
    a server would pass it on; (status, answer, chunks the app read)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"test"),
            (b"content-type", content_type),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    read, sent = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal read
        chunk = next(body, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], answer, read


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    limited = settings.model_copy(update={"max_request_bytes": 4 * MiB, "max_json_bytes": MiB})
    app = create_app(limited, reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
        assert_still_serving(test_client)


def test_a_chunked_body_past_the_limit_is_413(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", content=chunks(2 * MiB), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers  # sent chunked
    error = assert_error(response, 413, "payload_too_large")
    assert "THERMOML_MAX_JSON_BYTES" in error["message"]
    assert response.headers["connection"] == "close"  # the rest of the body was never read
    assert client.post("/v1/jobs", json=COOLING).status_code == 202


def test_a_declared_body_past_the_json_limit_is_413_before_it_is_read(client: TestClient) -> None:
    body = b"".join(chunks(2 * MiB))
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert "THERMOML_MAX_JSON_BYTES" in assert_error(response, 413, "payload_too_large")["message"]


def test_binary_rows_have_the_larger_limit(client: TestClient) -> None:
    """2 MiB of .npy passes the 1 MiB JSON limit (and reaches the model lookup: 404); 5 MiB
    does not pass the 4 MiB request limit."""
    npy = {"content-type": "application/x-npy"}
    response = client.post("/v1/models/nope/score", content=b"\0" * 2 * MiB, headers=npy)
    assert_error(response, 404, "not_found")
    response = client.post("/v1/models/nope/score", content=b"\0" * 5 * MiB, headers=npy)
    assert (
        "THERMOML_MAX_REQUEST_BYTES" in assert_error(response, 413, "payload_too_large")["message"]
    )


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/models/nope/generate"])
def test_a_huge_chunked_body_is_neither_read_nor_kept(settings: Settings, path: str) -> None:
    """128 MiB streamed at the default limits: refused once THERMOML_MAX_JSON_BYTES (16 MiB) has
    arrived. Before the limit held while streaming, FastAPI buffered all 128 MiB and parsed it
    (the body, its chunks and the parsed string: over 384 MiB). The budget is the 16 MiB the
    limit lets in, twice (Starlette joins the chunks it read), plus 16 MiB for the allocator."""
    app = create_app(settings, reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)
    gc.collect()
    before = rss()
    reset_peak()
    status, answer, read = post_chunked(app, path, chunks(128 * MiB), b"application/json")
    grown = peak_rss() - before
    assert read <= settings.max_json_bytes // CHUNK + 2, read  # nothing past the limit read
    assert grown < 3 * settings.max_json_bytes, f"peak grew by {grown / MiB:.0f} MiB"
    assert status == 413, answer[:300]
    assert b"payload_too_large" in answer


def test_json_nested_past_the_parsers_limits_is_422(client: TestClient) -> None:
    json_type = {"content-type": "application/json"}
    for depth in (100, 5000):  # past service.inputs.MAX_DEPTH; past the parser's recursion
        body = b'{"kind": "cooling", "params": ' + b"[" * depth + b"]" * depth + b"}"
        error = assert_error(
            client.post("/v1/jobs", content=body, headers=json_type), 422, "validation_error"
        )
        assert "nested" in error["message"] or "recursion" in error["message"], error
    body = b'{"n": 1, "sampler": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = client.post("/v1/models/nope/generate", content=body, headers=json_type)
    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize("digits", [21, 401, 5000])
def test_a_huge_integer_in_a_job_spec_is_422(client: TestClient, digits: int) -> None:
    for field in (b'"priority"', b'"params": {"dt"'):
        closing = b"}" if b"{" in field else b""
        body = b'{"kind": "cooling", ' + field + b": 1" + b"0" * (digits - 1) + closing + b"}"
        response = client.post(
            "/v1/jobs", content=body, headers={"content-type": "application/json"}
        )
        error = assert_error(response, 422, "validation_error")
        assert "64 bits" in error["message"] or "4300 digits" in error["message"], error
    response = client.post(
        "/v1/models/nope/generate",
        content=b'{"n": ' + HUGE_INT + b"}",
        headers={"content-type": "application/json"},
    )
    assert "64 bits" in assert_error(response, 422, "validation_error")["message"]


@pytest.fixture
def model_client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=True)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
        assert_still_serving(test_client)


def test_rows_nested_too_deep_or_holding_a_huge_integer_are_422(model_client: TestClient) -> None:
    spec = {"kind": "pca", "dataset": "builtin:digits", "params": {"n_components": 2}}
    job = model_client.post("/v1/jobs", json=spec).json()
    model_id = model_client.get(f"/v1/jobs/{job['id']}").json()["model_id"]
    assert model_id, job
    score = f"/v1/models/{model_id}/score"
    row = b"[" + b", ".join([b"1"] * 63) + b", "
    bodies = {
        "past orjson's 1024 levels": b'{"inputs": ' + b"[" * 1100 + b"]" * 1100 + b"}",
        "900 levels behind a NaN": b'{"inputs": [[NaN, ' + b"[" * 900 + b"]" * 900 + b"]]}",
        "a 401-digit integer": b'{"inputs": [' + row + HUGE_INT + b"]]}",
        "a 401-digit integer behind a NaN": b'{"inputs": [' + row + HUGE_INT + b"], [NaN]]}",
    }
    for name, body in bodies.items():
        response = model_client.post(
            score, content=body, headers={"content-type": "application/json"}
        )
        error = assert_error(response, 422, "validation_error")
        assert error["message"], name
    good = b'{"inputs": [' + row + b"1]]}"
    assert model_client.post(score, content=good).status_code == 200
