"""Dashboard sign-in sessions: create (the id is returned once), resolve to a key, end.

The cookie holds a random id; the table holds only its SHA-256, so a copy of the database
signs no one in. A session ends when it expires, at sign-out, or when its key is revoked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.tables import ApiKey, SignInSession


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(session: Session, *, key_id: str, ttl: float) -> str:
    """A new session for the key, lasting `ttl` seconds; returns the id for the cookie."""
    now = utcnow()
    # Expired rows are only ever read as absent; sign-ins are rare enough to sweep them here.
    session.execute(delete(SignInSession).where(SignInSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(
        SignInSession(
            id_sha256=digest(token),
            key_id=key_id,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
        )
    )
    session.flush()
    return token


def find_key(session: Session, *, token: str) -> ApiKey | None:
    """The active key of an unexpired session with this id, or None."""
    return session.scalars(
        select(ApiKey)
        .join(SignInSession, SignInSession.key_id == ApiKey.id)
        .where(
            SignInSession.id_sha256 == digest(token),
            SignInSession.expires_at > utcnow(),
            ApiKey.revoked_at.is_(None),
        )
    ).first()


def end(session: Session, *, token: str) -> None:
    """Sign-out: the session with this id no longer exists."""
    session.execute(delete(SignInSession).where(SignInSession.id_sha256 == digest(token)))


def end_for_key(session: Session, *, key_id: str) -> None:
    """Every session of the key ends (it was revoked)."""
    session.execute(delete(SignInSession).where(SignInSession.key_id == key_id))
