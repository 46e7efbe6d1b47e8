"""The FastAPI application: routers, error handlers and lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from service import prom
from service.api import docs, handlers, openapi
from service.api.routes import (
    dashboard,
    datasets,
    events,
    health,
    inference,
    jobs,
    keys,
    metrics,
    models,
    plots,
    session,
)
from service.auth import authenticate
from service.config import Settings, get_settings
from service.db import keys as key_repo
from service.db.session import make_engine, make_sessionmaker
from service.limits import BodyLimit, InputGuard
from service.queue import Publisher
from service.reconciler import Reconciler

DESCRIPTION = """
thermoml trains and serves deep unsupervised models, and runs thermodynamic simulations, as jobs.
Every job records a thermodynamic metric history (energy, temperature, entropy, free energy, heat,
entropy production). Submit with `POST /v1/jobs` ("Try it out" has a runnable example per kind),
then watch `GET /v1/jobs/{id}` and `GET /v1/jobs/{id}/metrics`.
"""


def ensure_bootstrap_key(sessions: Any, secret: str) -> None:
    """Make the deployment's admin key (THERMOML_BOOTSTRAP_ADMIN_KEY) if it does not exist."""
    with sessions.begin() as session:
        key_repo.ensure(session, secret=secret, scopes=["admin"], name="bootstrap-admin")


def create_app(settings: Settings | None = None, *, reconcile: bool = True) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reconciler = Reconciler(app.state.sessions, app.state.publisher, settings)
        if settings.bootstrap_admin_key:
            ensure_bootstrap_key(app.state.sessions, settings.bootstrap_admin_key)
        if reconcile:
            reconciler.start()
        try:
            yield
        finally:
            await events.close_hub(app)
            if reconcile:
                reconciler.stop()
            app.state.publisher.close()
            app.state.engine.dispose()

    app = FastAPI(
        title="thermoml",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(authenticate)],
        docs_url=None,  # served with local assets by service.api.docs
        redoc_url=None,
        openapi_tags=openapi.TAGS,
        generate_unique_id_function=openapi.operation_id,
    )
    openapi.install(app, settings)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_request_bytes, max_json_bytes=settings.max_json_bytes
    )
    app.add_middleware(InputGuard)  # outermost of the two: refused before a byte is read
    app.state.settings = settings
    app.state.engine = make_engine(settings.resolved_database_url)
    app.state.sessions = make_sessionmaker(app.state.engine)
    app.state.publisher = Publisher(settings)
    handlers.install(app)
    docs.install(app)
    prom.install(app)
    for module in (
        health,
        jobs,
        metrics,
        datasets,
        models,
        inference,
        events,
        plots,
        prom,
        dashboard,
        session,
        keys,
    ):
        app.include_router(module.router)
    logging.getLogger("thermoml").setLevel(logging.INFO)
    return app
