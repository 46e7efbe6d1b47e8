"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service import workers_seen
from service.db.session import ping
from service.errors import ServiceError

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (no dependency is consulted; answered on the event loop, so no busy
    thread pool delays it)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "database or broker unreachable (`unavailable`), or a queue holds "
            "queued jobs and no live worker consumes it (`no_worker`)"
        }
    },
)
async def readyz(request: Request) -> Any:
    """Ready when the database answers a query, the broker accepts a connection, and every
    queue that holds queued jobs has a live worker (one that sent a heartbeat lately)."""
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
    if not all(v == "ok" for v in checks.values()):
        error = ServiceError(
            "unavailable",
            "not ready: " + ", ".join(f"{k} {v}" for k, v in checks.items() if v != "ok"),
            {"checks": checks},
        )
        return JSONResponse(error.body(), status_code=error.status, headers={"Retry-After": "5"})
    try:
        waiting = await asyncio.wait_for(run_in_threadpool(_unserved_queues, state), timeout)
    except Exception as exc:  # workers unknown (no Redis broker): not a reason to be unready
        log.debug("readyz: workers unavailable: %s", exc)
        waiting = {}
    if waiting:
        return _no_worker(checks, waiting)
    return {"status": "ready", "checks": checks}


def _unserved_queues(state: Any) -> dict[str, int]:
    """Queued jobs per queue that no live worker consumes (the workers are read only when
    some job waits)."""
    with state.sessions() as session:
        queued = workers_seen.queued_jobs(session)
    if not any(queued.values()):
        return {}
    served = workers_seen.workers_per_queue(workers_seen.live_workers(state.settings), ())
    return {q: n for q, n in sorted(queued.items()) if n and not served.get(q)}


def _no_worker(checks: dict[str, str], waiting: dict[str, int]) -> JSONResponse:
    message = "no live worker consumes " + ", ".join(
        f"queue {queue} ({count} job{'s' * (count != 1)} queued)"
        for queue, count in waiting.items()
    )
    # `no_worker` answers 503; the envelope is the one every error uses.
    body = {
        "error": {
            "code": "no_worker",
            "message": message,
            "details": {"checks": checks, "queues": sorted(waiting), "queued": waiting},
        }
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
