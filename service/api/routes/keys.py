"""API keys over HTTP, for admins: make a key for a tenant (its secret is in that answer only),
list keys (never their secrets), revoke one (its sign-in sessions end with it)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service.api.deps import PageDep, SessionDep
from service.db import keys as key_repo
from service.schemas.common import ERROR_RESPONSES
from service.schemas.keys import KeyCreate, KeyCreated, KeyOut, KeyPage, key_out

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERROR_RESPONSES)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(body: KeyCreate, session: SessionDep, response: Response) -> KeyCreated:
    """Make a key (admin scope). The answer's `key` is the secret, shown this once only."""
    with session.begin():
        key, secret = key_repo.create(
            session, scopes=body.scopes, name=body.name, tenant=body.tenant
        )
        created = KeyCreated(**key_out(key).model_dump(), key=secret)
    response.headers["Location"] = f"/v1/keys/{key.id}"
    response.headers["Cache-Control"] = "no-store"  # the secret must not linger in a cache
    return created


@router.get("", response_model=KeyPage)
def list_keys(session: SessionDep, page: PageDep, tenant: str | None = None) -> KeyPage:
    """Keys, newest first, revoked ones included; filter by `tenant`. Never their secrets."""
    items, next_cursor = key_repo.list_page(session, page, tenant=tenant)
    return KeyPage(items=[key_out(k) for k in items], next_cursor=next_cursor)


@router.get("/{key_id}", response_model=KeyOut)
def get_key(key_id: str, session: SessionDep) -> KeyOut:
    """One key (never its secret)."""
    return key_out(key_repo.get(session, key_id=key_id))


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_key(key_id: str, session: SessionDep) -> Response:
    """Revoke the key: it and its sign-in sessions stop working at once. Revoking a revoked
    key changes nothing."""
    with session.begin():
        key_repo.revoke(session, ref=key_repo.get(session, key_id=key_id).id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
