"""Dashboard sessions with THERMOML_AUTH=required: the cookie holds a server-side session id (never
the key), sign-out and revocation end it, it expires; cookie-authenticated writes must come from
this origin; `next` stays on this site; `last_used_at` is kept, at most once a minute."""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select, update

from service.auth import SESSION_COOKIE
from service.config import Settings
from service.db import keys as key_repo
from service.db import sessions as signin_repo
from service.db.base import utcnow
from service.db.tables import ApiKey, SignInSession
from service.main import create_app
from tests.conftest import RecordingPublisher, free_port
from tests.integration.helpers import start, stop, wait_for
from tests.integration.test_dashboard_browser import DevTools, chromium  # noqa: F401 (fixture)

COOLING = {"kind": "cooling", "params": {"duration": 1}}
SAME_SITE = {"Origin": "http://testserver"}
CSV = b"a,b\n1,2\n3,4\n5,6\n"


@pytest.fixture
def app_and_keys(settings: Settings) -> Iterator[tuple[Any, dict[str, str]]]:
    app = create_app(settings.model_copy(update={"auth": "required"}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)  # jobs stay queued: cancellable
    keys: dict[str, str] = {}
    with app.state.sessions.begin() as session:
        for scopes in ("read", "read,train", "admin"):
            keys[scopes] = key_repo.create(session, scopes=scopes.split(","), name=scopes)[1]
    yield app, keys


@pytest.fixture
def secured(
    app_and_keys: tuple[Any, dict[str, str]],
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app, keys = app_and_keys
    with TestClient(app) as client:
        yield client, keys


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def sign_in(client: TestClient, secret: str) -> str:
    """Sign in as a browser on this site would; the session id the cookie now holds."""
    response = client.post("/v1/session", data={"key": secret}, headers=SAME_SITE)
    assert response.status_code == 204, response.text
    return response.cookies[SESSION_COOKIE]


def with_cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={token}"}


def queued_job(client: TestClient, keys: dict[str, str]) -> str:
    job = client.post("/v1/jobs", json=COOLING, headers=bearer(keys["read,train"]))
    assert job.status_code == 202
    return str(job.json()["id"])


def key_row(client: TestClient, secret: str) -> ApiKey:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        key = key_repo.find_active(session, secret=secret)
        assert key is not None
        session.expunge(key)
        return key


# --- the session itself -------------------------------------------------------------------------


def test_the_cookie_holds_a_random_session_id_and_only_its_hash_is_stored(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    response = client.post("/v1/session", data={"key": keys["read"]}, headers=SAME_SITE)
    assert response.status_code == 204
    token = response.cookies[SESSION_COOKIE]
    assert token != keys["read"] and keys["read"] not in response.headers["set-cookie"]
    assert len(token) >= 43  # 32 random bytes
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Max-Age=43200" in cookie  # THERMOML_SESSION_TTL's default, 12 h
    assert "Secure" not in cookie  # plain HTTP, THERMOML_COOKIE_SECURE unset
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        rows = list(session.scalars(select(SignInSession)))
    assert [r.id_sha256 for r in rows] == [signin_repo.digest(token)]
    assert rows[0].key_id == key_row(client, keys["read"]).id
    lifetime = rows[0].expires_at - rows[0].created_at
    assert lifetime == dt.timedelta(hours=12)
    assert client.get("/v1/jobs").status_code == 200  # the cookie authenticates
    # Two sign-ins are two sessions with different ids.
    client.cookies.clear()
    assert sign_in(client, keys["read"]) != token


def test_the_cookie_is_secure_over_https_or_when_configured(
    settings: Settings, app_and_keys: tuple[Any, dict[str, str]]
) -> None:
    app, keys = app_and_keys
    with TestClient(app, base_url="https://testserver") as client:
        response = client.post(
            "/v1/session", data={"key": keys["read"]}, headers={"Origin": "https://testserver"}
        )
        assert response.status_code == 204 and "Secure" in response.headers["set-cookie"]
    configured = create_app(
        settings.model_copy(update={"auth": "required", "cookie_secure": True, "session_ttl": 60}),
        reconcile=False,
    )
    with TestClient(configured) as client:
        response = client.post("/v1/session", data={"key": keys["read"]}, headers=SAME_SITE)
        cookie = response.headers["set-cookie"]
        assert response.status_code == 204 and "Secure" in cookie and "Max-Age=60" in cookie


def test_replaying_the_cookie_after_sign_out_is_401(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    token = sign_in(client, keys["read"])
    assert client.get("/v1/jobs").status_code == 200
    out = client.delete("/v1/session", headers=SAME_SITE)
    assert out.status_code == 204
    assert f"{SESSION_COOKIE}=" in out.headers["set-cookie"]  # the browser's copy is cleared
    client.cookies.clear()
    replay = client.get("/v1/jobs", headers=with_cookie(token))
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "unauthorized"
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert session.scalars(select(SignInSession)).first() is None  # the row is gone


def test_sign_out_from_another_site_is_refused(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    sign_in(client, keys["read"])
    out = client.delete("/v1/session", headers={"Origin": "https://evil.example"})
    assert out.status_code == 403
    assert client.get("/v1/jobs").status_code == 200  # still signed in


def test_revoking_the_key_ends_its_sessions(
    secured: tuple[TestClient, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    from service.keys_cli import cmd_revoke

    client, keys = secured
    token = sign_in(client, keys["read"])
    client.cookies.clear()  # another browser
    other = sign_in(client, keys["read,train"])
    client.cookies.clear()
    assert client.get("/v1/jobs", headers=with_cookie(token)).status_code == 200
    assert cmd_revoke(argparse.Namespace(key=key_row(client, keys["read"]).id)) == 0
    assert "revoked" in capsys.readouterr().out
    assert client.get("/v1/jobs", headers=with_cookie(token)).status_code == 401
    assert client.get("/v1/jobs", headers=with_cookie(other)).status_code == 200
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        left = set(session.scalars(select(SignInSession.id_sha256)))
    assert left == {signin_repo.digest(other)}  # ended, not merely refused


def test_an_expired_session_is_401(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = secured
    token = sign_in(client, keys["read"])
    client.cookies.clear()
    assert client.get("/v1/jobs", headers=with_cookie(token)).status_code == 200
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        session.execute(update(SignInSession).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    expired = client.get("/v1/jobs", headers=with_cookie(token))
    assert expired.status_code == 401
    assert "sign in again" in expired.json()["error"]["message"]
    # A browser asking for a page is sent to sign in again.
    page = client.get("/", headers={"accept": "text/html", **with_cookie(token)})
    assert page.history and page.history[0].headers["location"] == "/signin"


def test_an_unknown_cookie_is_401_and_never_a_key(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    assert client.get("/v1/jobs", headers=with_cookie("made-up")).status_code == 401
    # The cookie no longer carries a key: a key put there signs no one in.
    assert client.get("/v1/jobs", headers=with_cookie(keys["admin"])).status_code == 401


# --- same-origin writes -------------------------------------------------------------------------

CROSS_SITE: list[dict[str, str]] = [
    {"Origin": "https://evil.example"},
    {"Origin": "http://evil.example"},
    {"Origin": "http://testserver.evil.example"},
    {"Origin": "https://testserver"},  # another scheme is another origin
    {"Origin": "http://testserver:8080"},  # and so is another port
    {"Origin": "null"},  # sandboxed frames, data: URLs
    {"Origin": "http://testserver/path"},  # not an origin at all
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {},  # a cookie with no word on where the request comes from
]


@pytest.mark.parametrize("headers", CROSS_SITE, ids=lambda h: repr(h) if h else "no-headers")
def test_a_cookie_write_from_another_origin_is_403(
    secured: tuple[TestClient, dict[str, str]], headers: dict[str, str]
) -> None:
    client, keys = secured
    job_id = queued_job(client, keys)
    sign_in(client, keys["read,train"])
    cancel = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert cancel.status_code == 403
    assert cancel.json()["error"]["code"] == "forbidden"
    upload = client.post(
        "/v1/datasets", files={"file": ("x.csv", CSV)}, data={"name": "csrf"}, headers=headers
    )
    assert upload.status_code == 403
    job = client.get(f"/v1/jobs/{job_id}").json()  # reads need no Origin (EventSource, links)
    assert job["status"] == "queued"
    names = [d["name"] for d in client.get("/v1/datasets").json()["items"]]
    assert "csrf" not in names


@pytest.mark.parametrize(
    "headers",
    [
        SAME_SITE,
        {"Origin": "http://testserver:80"},
        {"Origin": "HTTP://TestServer"},
        {"Sec-Fetch-Site": "same-origin"},
        {**SAME_SITE, "Sec-Fetch-Site": "same-origin"},
    ],
)
def test_a_cookie_write_from_this_origin_goes_through(
    secured: tuple[TestClient, dict[str, str]], headers: dict[str, str]
) -> None:
    client, keys = secured
    job_id = queued_job(client, keys)
    sign_in(client, keys["read,train"])
    cancel = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    upload = client.post(
        "/v1/datasets", files={"file": ("x.csv", CSV)}, data={"name": "ok"}, headers=headers
    )
    assert upload.status_code == 201, upload.text


def test_origin_wins_over_sec_fetch_site(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = secured
    job_id = queued_job(client, keys)
    sign_in(client, keys["read,train"])
    forged = {"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"}
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=forged).status_code == 403


def test_bearer_requests_need_no_origin(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = secured
    job_id = queued_job(client, keys)
    sign_in(client, keys["read"])  # a cookie too: the bearer key is what counts
    headers = {"Origin": "https://evil.example", **bearer(keys["read,train"])}
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
    upload = client.post("/v1/datasets", files={"file": ("x.csv", CSV)}, headers=headers)
    assert upload.status_code == 201


def test_sign_in_from_another_site_is_refused(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        forged = client.post(
            "/v1/session", data={"key": keys["read"], "next": "/"}, headers=headers
        )
        assert forged.status_code == 403
        assert SESSION_COOKIE not in forged.cookies
    # A client that is not a browser says nothing about origins, and holds no cookie to abuse.
    assert client.post("/v1/session", data={"key": keys["read"]}).status_code == 204


# --- next ---------------------------------------------------------------------------------------

OFF_SITE = [
    "//evil.example/x",
    "///evil.example/x",
    "https://evil.example/x",
    "http:evil.example",
    "javascript:alert(1)",
    "/\\evil.example",
    "\\\\evil.example",
    "/\\/evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "/\x00/evil.example",
    " //evil.example",
    "evil.example",
    "/" + "a" * 3000,
]


@pytest.mark.parametrize("next_", OFF_SITE)
def test_next_never_leaves_the_site(secured: tuple[TestClient, dict[str, str]], next_: str) -> None:
    client, keys = secured
    response = client.post(
        "/v1/session",
        data={"key": keys["read"], "next": next_},
        headers=SAME_SITE,
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"


@pytest.mark.parametrize("next_", ["/", "/jobs/abc", "/models?kind=vae&x=1#top", "/docs"])
def test_next_keeps_a_local_path(secured: tuple[TestClient, dict[str, str]], next_: str) -> None:
    client, keys = secured
    response = client.post(
        "/v1/session",
        data={"key": keys["read"], "next": next_},
        headers=SAME_SITE,
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == next_


# --- last_used_at -------------------------------------------------------------------------------


def test_last_used_at_is_recorded_at_most_once_a_minute(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    app: Any = client.app
    assert key_row(client, keys["read"]).last_used_at is None
    writes: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_KEYS"):
            writes.append(statement)

    event.listen(app.state.engine, "before_cursor_execute", count)
    try:
        before = utcnow()
        for _ in range(10):
            assert client.get("/v1/jobs", headers=bearer(keys["read"])).status_code == 200
        first = key_row(client, keys["read"]).last_used_at
        assert first is not None and first >= before
        assert len(writes) == 1  # ten requests, one write
        # A minute later, the next request records the use again.
        with app.state.sessions.begin() as session:
            session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_row(client, keys["read"]).id)
                .values(last_used_at=first - dt.timedelta(seconds=61))
            )
        writes.clear()
        assert client.get("/v1/jobs", headers=bearer(keys["read"])).status_code == 200
        assert client.get("/v1/jobs", headers=bearer(keys["read"])).status_code == 200
        again = key_row(client, keys["read"]).last_used_at
        assert again is not None and again >= first and len(writes) == 1
    finally:
        event.remove(app.state.engine, "before_cursor_execute", count)


def test_a_session_records_the_use_of_its_key(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    sign_in(client, keys["read,train"])
    assert key_row(client, keys["read,train"]).last_used_at is not None  # signing in is a use
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        session.execute(update(ApiKey).values(last_used_at=None))
    assert client.get("/v1/jobs").status_code == 200
    assert key_row(client, keys["read,train"]).last_used_at is not None


# --- /metrics guarded while the API is open ----------------------------------------------------


def test_metrics_auth_accepts_a_session(settings: Settings) -> None:
    guarded = settings.model_copy(update={"metrics_auth": "required"})
    app = create_app(guarded, reconcile=False)
    with app.state.sessions.begin() as session:
        secret = key_repo.create(session, scopes=["read"], name="prometheus")[1]
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        sign_in(client, secret)
        assert client.get("/metrics").status_code == 200


# --- a real browser signs in through the form ---------------------------------------------------

BROWSER_KEY = "tml_browser-admin-key-0123456789"


@pytest.fixture
def secured_api(tmp_path: Path) -> Iterator[str]:
    """`thermoml api` with THERMOML_AUTH=required and one admin key (no job is submitted, so
    the broker it names need not run)."""
    port = free_port()
    env = {
        "THERMOML_DATA_DIR": str(tmp_path / "state"),
        "THERMOML_DATABASE_URL": "",
        "THERMOML_ARTIFACT_URI": "",
        "THERMOML_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "THERMOML_AUTH": "required",
        "THERMOML_METRICS_AUTH": "disabled",
        "THERMOML_BOOTSTRAP_ADMIN_KEY": BROWSER_KEY,
    }
    log = tmp_path / "api.log"
    assert start(["migrate"], env, tmp_path / "migrate.log").wait(60) == 0
    api = start(["api", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: (
                api.poll() is not None or httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            ),
            60,
            "the API",
        )
        assert api.poll() is None, log.read_text()[-3000:]
        yield base
    finally:
        try:
            stop(api, signal.SIGTERM, timeout=30)
        except subprocess.TimeoutExpired:
            api.kill()
        print(log.read_text()[-3000:])


def awaited(browser: DevTools, expression: str) -> Any:
    """The value of a promise evaluated in the page."""
    result = browser.call(
        "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
    )
    assert "exceptionDetails" not in result, result
    return result["result"].get("value")


@pytest.mark.integration
def test_a_browser_signs_in_through_the_form(chromium: DevTools, secured_api: str) -> None:  # noqa: F811
    base = secured_api
    chromium.open(f"{base}/")
    assert chromium.evaluate("location.pathname") == "/signin"  # sent to sign in
    chromium.evaluate(
        f"document.querySelector('input[name=key]').value = {BROWSER_KEY!r};"
        "document.querySelector('form').submit()"
    )
    # Chromium posts the form with this origin's Origin header: the check lets it through.
    chromium.wait_for("document.title === 'Jobs · thermoml'", 20, "the job list")
    assert chromium.evaluate("location.pathname") == "/"
    assert chromium.evaluate("document.cookie") == ""  # HttpOnly: no script reads the session
    # The session (not the key) is what the browser holds, and it authenticates reads.
    assert awaited(chromium, "fetch('/v1/jobs').then(r => r.status)") == 200
    # A same-origin write with the cookie goes through: this one signs out, ending the session.
    assert awaited(chromium, "fetch('/v1/session', {method: 'DELETE'}).then(r => r.status)") == 204
    assert awaited(chromium, "fetch('/v1/jobs').then(r => r.status)") == 401
