"""`/v1/keys` for admins: make a key for a tenant (the secret in that answer only), list keys
without secrets, revoke one (its sessions end with it); every input checked (422), every other
scope refused (403)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.config import Settings
from service.db import keys as key_repo
from service.db.tables import SignInSession
from service.main import create_app
from tests.conftest import RecordingPublisher

SAME_SITE = {"Origin": "http://testserver"}


@pytest.fixture
def secured(settings: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = create_app(settings.model_copy(update={"auth": "required"}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)
    keys: dict[str, str] = {}
    with app.state.sessions.begin() as session:
        for scopes in ("read", "read,train", "infer", "admin"):
            keys[scopes] = key_repo.create(session, scopes=scopes.split(","), name=scopes)[1]
    with TestClient(app) as client:
        yield client, keys


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def make(client: TestClient, admin: str, **body: Any) -> Any:
    return client.post("/v1/keys", json={"scopes": ["read"], **body}, headers=bearer(admin))


def test_an_admin_makes_a_key_and_sees_its_secret_once(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    admin = bearer(keys["admin"])
    made = make(client, keys["admin"], name="acme-ci", scopes=["read", "train"], tenant="acme")
    assert made.status_code == 201, made.text
    body = made.json()
    secret = body["key"]
    assert secret.startswith("tml_") and len(secret) > 40
    assert body["name"] == "acme-ci" and body["tenant"] == "acme"
    assert body["scopes"] == ["read", "train"] and secret.startswith(body["prefix"])
    assert body["revoked_at"] is None and body["last_used_at"] is None
    assert made.headers["location"] == f"/v1/keys/{body['id']}"
    assert made.headers["cache-control"] == "no-store"
    # The key works, with its scopes and its tenant.
    assert client.get("/v1/jobs", headers=bearer(secret)).status_code == 200
    assert client.post("/v1/models/m/score", json={}, headers=bearer(secret)).status_code == 403
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        stored = key_repo.find_active(session, secret=secret)
        assert stored is not None and stored.tenant == "acme" and stored.id == body["id"]
    # Never shown again: not in the list, not in the key's own page.
    one = client.get(f"/v1/keys/{body['id']}", headers=admin)
    assert one.status_code == 200 and "key" not in one.json()
    assert one.json()["tenant"] == "acme" and one.json()["last_used_at"] is not None
    listing = client.get("/v1/keys", headers=admin)
    assert listing.status_code == 200
    assert secret not in listing.text and secret not in one.text
    for secret_ in keys.values():
        assert secret_ not in listing.text
    assert all("key" not in item for item in listing.json()["items"])
    assert body["id"] in {item["id"] for item in listing.json()["items"]}


def test_defaults_name_unnamed_and_tenant_default(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    made = make(client, keys["admin"])
    assert made.status_code == 201
    assert made.json()["name"] == "unnamed" and made.json()["tenant"] == "default"


@pytest.mark.parametrize("scopes", ["read", "read,train", "infer"])
def test_only_admins_reach_keys(secured: tuple[TestClient, dict[str, str]], scopes: str) -> None:
    client, keys = secured
    headers = bearer(keys[scopes])
    key_id = make(client, keys["admin"]).json()["id"]
    for method, path, body in (
        ("POST", "/v1/keys", {"scopes": ["admin"]}),
        ("GET", "/v1/keys", None),
        ("GET", f"/v1/keys/{key_id}", None),
        ("DELETE", f"/v1/keys/{key_id}", None),
    ):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 403, (method, path)
    assert client.head("/v1/keys", headers=headers).status_code in (403, 405)  # never a listing
    assert client.get("/v1/keys").status_code == 401
    assert (
        client.get(f"/v1/keys/{key_id}", headers=bearer(keys["admin"])).json()["revoked_at"] is None
    )


def test_a_cross_site_page_cannot_make_keys_with_an_admins_cookie(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    signed = client.post("/v1/session", data={"key": keys["admin"]}, headers=SAME_SITE)
    assert signed.status_code == 204
    before = len(client.get("/v1/keys").json()["items"])
    forged = client.post(
        "/v1/keys", json={"scopes": ["admin"]}, headers={"Origin": "https://evil.example"}
    )
    assert forged.status_code == 403
    assert len(client.get("/v1/keys").json()["items"]) == before
    assert client.post("/v1/keys", json={"scopes": ["read"]}, headers=SAME_SITE).status_code == 201


INVALID: list[Any] = [
    {},  # no scopes
    {"scopes": []},
    {"scopes": ["root"]},
    {"scopes": ["read", "sudo"]},
    {"scopes": "read"},
    {"scopes": ["read"] * 5},
    {"scopes": [None]},
    {"scopes": ["read"], "name": ""},
    {"scopes": ["read"], "name": " padded "},
    {"scopes": ["read"], "name": "x" * 101},
    {"scopes": ["read"], "name": "nul\u0000name"},
    {"scopes": ["read"], "name": "two\nlines"},
    {"scopes": ["read"], "name": "bell\u0007"},
    {"scopes": ["read"], "name": "\u202eevil"},  # right-to-left override
    {"scopes": ["read"], "name": 7},
    {"scopes": ["read"], "tenant": ""},
    {"scopes": ["read"], "tenant": "t" * 65},
    {"scopes": ["read"], "tenant": "nul\u0000"},
    {"scopes": ["read"], "tenant": "Acme Corp"},
    {"scopes": ["read"], "tenant": "../etc"},
    {"scopes": ["read"], "tenant": None},
    {"scopes": ["read"], "owner": "someone"},  # unknown field
    [{"scopes": ["read"]}],
    "read",
]


@pytest.mark.parametrize("body", INVALID, ids=lambda b: repr(b)[:40])
def test_every_input_is_checked(secured: tuple[TestClient, dict[str, str]], body: Any) -> None:
    client, keys = secured
    response = client.post("/v1/keys", json=body, headers=bearer(keys["admin"]))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    listing = client.get("/v1/keys", headers=bearer(keys["admin"])).json()["items"]
    assert len(listing) == 4  # nothing was made


def test_keys_are_listed_in_pages(secured: tuple[TestClient, dict[str, str]]) -> None:
    client, keys = secured
    admin = bearer(keys["admin"])
    for i in range(5):
        tenant = "acme" if i % 2 else "globex"
        assert make(client, keys["admin"], name=f"k{i}", tenant=tenant).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/keys", params=params, headers=admin).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 9
    acme = client.get("/v1/keys", params={"tenant": "acme"}, headers=admin).json()["items"]
    assert sorted(item["name"] for item in acme) == ["k1", "k3"]
    bad = client.get("/v1/keys", params={"cursor": "nonsense"}, headers=admin)
    assert bad.status_code == 422
    assert client.get("/v1/keys", params={"limit": 501}, headers=admin).status_code == 422


def test_revoking_over_http_ends_the_key_and_its_sessions(
    secured: tuple[TestClient, dict[str, str]],
) -> None:
    client, keys = secured
    admin = bearer(keys["admin"])
    made = make(client, keys["admin"], scopes=["read"]).json()
    signed = client.post("/v1/session", data={"key": made["key"]}, headers=SAME_SITE)
    token = signed.cookies["thermoml_session"]
    client.cookies.clear()
    cookie = {"Cookie": f"thermoml_session={token}"}
    assert client.get("/v1/jobs", headers=cookie).status_code == 200
    gone = client.delete(f"/v1/keys/{made['id']}", headers=admin)
    assert gone.status_code == 204
    assert client.get("/v1/jobs", headers=bearer(made["key"])).status_code == 401
    assert client.get("/v1/jobs", headers=cookie).status_code == 401
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert session.scalars(select(SignInSession)).first() is None
    revoked_at = client.get(f"/v1/keys/{made['id']}", headers=admin).json()["revoked_at"]
    assert revoked_at is not None
    # Again: nothing changes, the first revocation's time stays.
    assert client.delete(f"/v1/keys/{made['id']}", headers=admin).status_code == 204
    assert client.get(f"/v1/keys/{made['id']}", headers=admin).json()["revoked_at"] == revoked_at
    # Only ids: a prefix (which the command line accepts) or an unknown id is not a key here.
    assert client.delete(f"/v1/keys/{made['prefix']}", headers=admin).status_code == 404
    missing = client.delete("/v1/keys/00000000-0000-0000-0000-000000000000", headers=admin)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get("/v1/keys/nope", headers=admin).status_code == 404
