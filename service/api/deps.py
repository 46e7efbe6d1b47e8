"""Dependencies as `Annotated` aliases, so a route's signature says what it needs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import Depends, Query, Request
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.auth import Principal, current
from service.config import Settings
from service.inference import ModelCache
from service.queue import Publisher
from service.storage import ArtifactStore

log = logging.getLogger(__name__)


CLOSING_THREADS = 8
# Pooled connections kept out of the request sessions' reach, for the callers that open their
# own short sessions (authentication, model lookups, readiness, the reconciler, metrics).
RESERVED_CONNECTIONS = 5


def session_slots(engine: Engine) -> int:
    """How many request sessions may be open at once: the pool's capacity, less a reserve."""
    pool = engine.pool
    size = pool.size() if hasattr(pool, "size") else 5
    overflow = max(0, int(getattr(pool, "_max_overflow", 0)))
    return max(1, size + overflow - RESERVED_CONNECTIONS)


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session for the request, closed (its connection back in the pool) afterwards.

    Sync routes run on the shared thread pool, and so does the serialization of their answers,
    after the route returned but before this session is closed. Were more sessions open than
    the connection pool holds, the threads could all be taken by routes waiting for a
    connection while the sessions holding the connections wait for a thread: a burst of
    concurrent requests would deadlock the API. So a request waits here, in the event loop
    and holding nothing, until a session slot is free; and sessions close on threads of
    their own.
    """
    state = request.app.state
    gate = getattr(state, "session_gate", None)
    if gate is None:
        gate = state.session_gate = anyio.Semaphore(session_slots(state.engine))
    closers = getattr(state, "session_closers", None)
    if closers is None:
        closers = state.session_closers = anyio.CapacityLimiter(CLOSING_THREADS)
    async with gate:
        session = state.sessions()
        try:
            yield session
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled request still returns its connection
                await anyio.to_thread.run_sync(_close, session, limiter=closers)


def _close(session: Session) -> None:
    try:
        session.close()
    except DBAPIError as exc:
        # The database went away after the answer was decided (a restart terminates every
        # connection): closing rolls back over a dead connection. The answer stands; the
        # connection is dropped, never raised into a response that has already started.
        log.warning("could not close a database session: %s", exc.orig or exc)
        with contextlib.suppress(Exception):
            session.invalidate()


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_publisher(request: Request) -> Publisher:
    return request.app.state.publisher  # type: ignore[no-any-return]


async def current_principal(request: Request) -> Principal:
    """The authenticated caller (set by the app-wide `service.auth.authenticate`)."""
    return current(request)


def get_store(request: Request) -> ArtifactStore:
    """The app's artifact store, made on first use from its settings."""
    store = getattr(request.app.state, "store", None)
    if store is None:
        store = ArtifactStore.from_settings(request.app.state.settings)
        request.app.state.store = store
    return store  # type: ignore[no-any-return]


async def get_model_cache(request: Request) -> ModelCache:
    """The app's loaded-model cache, made on first use (so start-up loads no model code)."""
    state = request.app.state
    cache = getattr(state, "model_cache", None)
    if cache is None:
        cache = state.model_cache = ModelCache(state.settings, get_store(request))
    return cache  # type: ignore[no-any-return]


async def loaded_model_cache(request: Request) -> ModelCache | None:
    """The app's model cache if a model operation made it, else None (nothing to forget)."""
    return getattr(request.app.state, "model_cache", None)


@dataclass(frozen=True)
class Page:
    """A list request's `limit` and `cursor`."""

    limit: int
    cursor: str | None


def page(
    limit: Annotated[int, Query(ge=1, le=500, description="Items per page.")] = 50,
    cursor: Annotated[
        str | None, Query(description="The `next_cursor` of the previous page.")
    ] = None,
) -> Page:
    return Page(limit, cursor)


def metric_names(
    names: Annotated[
        list[str] | None,
        Query(description="Metric names, comma-separated or repeated; default: all."),
    ] = None,
) -> list[str]:
    """The `names` query parameter as a list (empty: all metrics)."""
    return [n.strip() for item in names or [] for n in item.split(",") if n.strip()]


SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(current_principal)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
LoadedModelCacheDep = Annotated[ModelCache | None, Depends(loaded_model_cache)]
PageDep = Annotated[Page, Depends(page)]
MetricNamesDep = Annotated[list[str], Depends(metric_names)]
