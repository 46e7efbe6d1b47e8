"""API keys and scopes with THERMOML_AUTH=required; request size and per-key job caps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.auth import SESSION_COOKIE, required_scope
from service.config import Settings
from service.db import keys as key_repo
from service.main import create_app
from tests.conftest import RecordingPublisher

COOLING = {"kind": "cooling", "params": {"duration": 1}}


@pytest.fixture
def secured(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = create_app(settings.model_copy(update={"auth": "required"}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=True)
    keys: dict[str, str] = {}
    with app.state.sessions.begin() as session:
        for scopes in ("read", "read,train", "infer", "admin"):
            keys[scopes] = key_repo.create(session, scopes=scopes.split(","), name=scopes)[1]
    with TestClient(app) as client:
        yield client, keys


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_open_paths_need_no_key(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = secured
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/signin"):
        assert client.get(path).status_code == 200, path


def test_missing_or_wrong_key_is_401(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = secured
    missing = client.get("/v1/jobs")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/jobs", headers=bearer("tml_wrong")).status_code == 401


def test_scopes_are_enforced_per_route(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = secured
    assert client.get("/v1/jobs", headers=bearer(keys["read"])).status_code == 200
    refused = client.post("/v1/jobs", json=COOLING, headers=bearer(keys["read"]))
    assert refused.status_code == 403
    assert "train" in refused.json()["error"]["message"]
    job = client.post("/v1/jobs", json=COOLING, headers=bearer(keys["read,train"]))
    assert job.status_code == 202
    assert client.get("/v1/jobs", headers=bearer(keys["infer"])).status_code == 403
    assert client.post("/v1/jobs", json=COOLING, headers=bearer(keys["admin"])).status_code == 202
    score = client.post("/v1/models/x/score", json={"inputs": [[1]]}, headers=bearer(keys["read"]))
    assert score.status_code == 403
    score = client.post("/v1/models/x/score", json={"inputs": [[1]]}, headers=bearer(keys["infer"]))
    assert score.status_code == 404  # authorised; the model does not exist
    assert client.delete("/v1/models/x", headers=bearer(keys["infer"])).status_code == 403


def test_revoked_key_stops_working(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = secured
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        key_repo.revoke(session, ref=keys["read"][:10])
    assert client.get("/v1/jobs", headers=bearer(keys["read"])).status_code == 401


def test_idempotency_keys_are_scoped_per_api_key(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    headers = {"Idempotency-Key": "same"}
    a = client.post("/v1/jobs", json=COOLING, headers={**headers, **bearer(keys["read,train"])})
    b = client.post("/v1/jobs", json=COOLING, headers={**headers, **bearer(keys["admin"])})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_dashboard_sign_in_sets_a_strict_httponly_cookie(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    bad = client.post("/v1/session", data={"key": "tml_nope"})
    assert bad.status_code == 401
    response = client.post("/v1/session", data={"key": keys["read"]})
    assert response.status_code == 204
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/v1/jobs").status_code == 200  # the cookie now authenticates
    # Signing out changes state: from this site's own pages only (its Origin).
    assert client.delete("/v1/session", headers={"Origin": "http://testserver"}).status_code == 204
    client.cookies.clear()
    assert client.get("/v1/jobs").status_code == 401


def test_error_bodies_never_echo_the_key(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = secured
    secret = keys["read"]
    for response in (
        client.post("/v1/jobs", json=COOLING, headers=bearer(secret)),
        client.get("/v1/jobs", headers=bearer(secret + "x")),
    ):
        assert secret not in response.text


def test_required_scope_table() -> None:
    assert required_scope("GET", "/v1/jobs/1/metrics") == "read"
    assert required_scope("POST", "/v1/jobs/1/cancel") == "train"
    assert required_scope("DELETE", "/v1/datasets/1") == "train"
    assert required_scope("POST", "/v1/models/m@2/generate") == "infer"
    assert required_scope("DELETE", "/v1/models/m") == "admin"
    assert required_scope("GET", "/healthz") is None
    for method in ("GET", "HEAD", "POST", "DELETE"):
        assert required_scope(method, "/v1/keys") == "admin"
        assert required_scope(method, "/v1/keys/1") == "admin"


def test_oversized_body_is_413(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_request_bytes": 2048}), reconcile=False)
    app.state.publisher = RecordingPublisher()
    with TestClient(app) as client:
        body = {"kind": "cooling", "name": "x" * 4000}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert client.post("/v1/jobs", json=COOLING).status_code == 202


def test_per_key_caps_answer_429_with_retry_after(settings: Settings) -> None:
    capped = settings.model_copy(update={"max_queued_jobs_per_key": 2})
    app = create_app(capped, reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)  # jobs stay queued
    with TestClient(app) as client:
        for _ in range(2):
            assert client.post("/v1/jobs", json=COOLING).status_code == 202
        refused = client.post("/v1/jobs", json=COOLING)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "5"
        assert "2 queued jobs" in refused.json()["error"]["message"]


def test_a_browser_without_a_key_is_sent_to_sign_in(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    page = client.get("/", headers={"accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/signin"
    api = client.get("/v1/jobs", headers={"accept": "text/html"}, follow_redirects=False)
    assert api.status_code == 401  # API paths answer in the error envelope
    signed = client.post(
        "/v1/session", data={"key": keys["read"], "next": "/"}, follow_redirects=False
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/"
    assert client.get("/", headers={"accept": "text/html"}).status_code == 200
