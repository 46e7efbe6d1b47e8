"""API keys: create (the secret is returned once), find by secret, list, revoke (which ends
the key's sign-in sessions), and the throttled record of when a key was last used."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.db import pagination, tenancy
from service.db import sessions as signin_repo
from service.db.base import new_id, utcnow
from service.db.tables import ApiKey
from service.db.tenancy import EVERYONE
from service.errors import ServiceError

SCOPES = ("read", "train", "infer", "admin")
SECRET_PREFIX = "tml_"
# last_used_at is written at most this often per key: not a write per request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    session: Session, *, scopes: Sequence[str], name: str, tenant: str = tenancy.DEFAULT
) -> tuple[ApiKey, str]:
    """A new key of `tenant` and its secret (shown to its owner once; only its hash is stored)."""
    tenancy.check_name(tenant)
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ServiceError(
            "validation_error",
            f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}",
        )
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return _insert(session, secret=secret, scopes=scopes, name=name, tenant=tenant), secret


def ensure(session: Session, *, secret: str, scopes: Sequence[str], name: str) -> ApiKey:
    """The key with this secret, created if missing (the bootstrap admin key of a deployment)."""
    existing = session.scalars(select(ApiKey).where(ApiKey.secret_sha256 == digest(secret))).first()
    return existing or _insert(session, secret=secret, scopes=scopes, name=name)


def _insert(
    session: Session,
    *,
    secret: str,
    scopes: Sequence[str],
    name: str,
    tenant: str = tenancy.DEFAULT,
) -> ApiKey:
    key = ApiKey(
        id=new_id(),
        name=name,
        tenant=tenant,
        prefix=secret[: len(SECRET_PREFIX) + 6],
        secret_sha256=digest(secret),
        scopes=sorted(set(scopes)),
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key


def find_active(session: Session, *, secret: str) -> ApiKey | None:
    return session.scalars(
        select(ApiKey).where(ApiKey.secret_sha256 == digest(secret), ApiKey.revoked_at.is_(None))
    ).first()


def list_all(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def list_page(
    session: Session, page: pagination.PageRequest, *, tenant: str | None = None
) -> tuple[list[ApiKey], str | None]:
    """A page of every tenant's keys (or `tenant`'s), newest first."""
    return pagination.filtered_page(session, ApiKey, page, EVERYONE, tenant=tenant)


def get(session: Session, *, key_id: str) -> ApiKey:
    """The key with this id (revoked or not); ServiceError `not_found` otherwise."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise ServiceError("not_found", f"no key with id {key_id!r}")
    return key


def touch(session: Session, key: ApiKey) -> None:
    """Record that the key was used, unless that was recorded within LAST_USED_RESOLUTION.

    Decided on the row already read, so most requests write nothing; the conditional update
    keeps concurrent API processes from writing the same minute twice."""
    now = utcnow()
    stale = now - LAST_USED_RESOLUTION
    if key.last_used_at is not None and key.last_used_at > stale:
        return
    session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key.id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= stale),
        )
        .values(last_used_at=now)
    )


def revoke(session: Session, *, ref: str) -> ApiKey:
    """Revoke the key with this id or prefix, and end its sign-in sessions; revoking a
    revoked key keeps the time it was first revoked."""
    matches = list(
        session.scalars(select(ApiKey).where(or_(ApiKey.id == ref, ApiKey.prefix == ref)))
    )
    if len(matches) != 1:
        found = "no key" if not matches else f"{len(matches)} keys"
        raise ServiceError("not_found", f"{found} with id or prefix {ref!r}")
    key_id = matches[0].id
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    signin_repo.end_for_key(session, key_id=key_id)
    session.refresh(matches[0])
    return matches[0]
