"""API keys: create (the secret is returned once), find by secret, list, revoke."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from service.db import tenancy
from service.db.base import new_id, utcnow
from service.db.tables import ApiKey
from service.errors import ServiceError

SCOPES = ("read", "train", "infer", "admin")
SECRET_PREFIX = "tml_"


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


def revoke(session: Session, *, ref: str) -> ApiKey:
    """Revoke the key with this id or prefix."""
    matches = list(
        session.scalars(select(ApiKey).where(or_(ApiKey.id == ref, ApiKey.prefix == ref)))
    )
    if len(matches) != 1:
        found = "no key" if not matches else f"{len(matches)} keys"
        raise ServiceError("not_found", f"{found} with id or prefix {ref!r}")
    session.execute(update(ApiKey).where(ApiKey.id == matches[0].id).values(revoked_at=utcnow()))
    session.refresh(matches[0])
    return matches[0]
