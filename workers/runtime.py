"""Per-process database handles for the worker children (created after the fork)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.config import get_settings
from service.db.session import make_engine, make_sessionmaker

_engine: Engine | None = None
_sessions: sessionmaker[Session] | None = None


def sessions() -> sessionmaker[Session]:
    global _engine, _sessions
    if _sessions is None:
        _engine = make_engine(get_settings().resolved_database_url)
        _sessions = make_sessionmaker(_engine)
    return _sessions


def reset() -> None:
    """Forget connections inherited from the parent; the child opens its own."""
    global _engine, _sessions
    if _engine is not None:
        _engine.dispose(close=False)
    _engine, _sessions = None, None
