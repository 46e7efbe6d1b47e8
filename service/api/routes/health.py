"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.db.session import ping
from service.errors import ServiceError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (no dependency is consulted)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database or broker unreachable"}})
async def readyz(request: Request) -> Any:
    """Ready when the database answers a query and the broker accepts a connection."""
    state = request.app.state
    timeout = state.settings.publish_timeout + 1

    probes = (("database", partial(ping, state.engine)), ("broker", state.publisher.ping))
    checks: dict[str, str] = {}
    for name, probe in probes:
        try:
            await asyncio.wait_for(run_in_threadpool(probe), timeout)
            checks[name] = "ok"
        except Exception as exc:  # any failure of a dependency means "not ready"
            checks[name] = f"unavailable: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    error = ServiceError(
        "unavailable",
        "not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
        {"checks": checks},
    )
    return JSONResponse(error.body(), status_code=error.status, headers={"Retry-After": "5"})
