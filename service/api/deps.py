"""Dependencies as `Annotated` aliases, so a route's signature says what it needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.auth import Principal, current
from service.config import Settings
from service.queue import Publisher
from service.storage import ArtifactStore


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_publisher(request: Request) -> Publisher:
    return request.app.state.publisher  # type: ignore[no-any-return]


def current_principal(request: Request) -> Principal:
    """The authenticated caller (set by the app-wide `service.auth.authenticate`)."""
    return current(request)


def get_store(request: Request) -> ArtifactStore:
    """The app's artifact store, made on first use from its settings."""
    store = getattr(request.app.state, "store", None)
    if store is None:
        store = ArtifactStore.from_settings(request.app.state.settings)
        request.app.state.store = store
    return store  # type: ignore[no-any-return]


SessionDep = Annotated[Session, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(current_principal)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
