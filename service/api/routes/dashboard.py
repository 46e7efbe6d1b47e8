"""The dashboard: server-rendered pages over the same data as the API, no external assets.

`/` jobs, `/jobs/{id}` one job (its plots follow the job live through its event stream),
`/models` and `/models/{ref}` (evaluation and pictures), `/workers` the live workers (also a
section of `/`); `/static/*` serves the page assets.
The lists show the signed-in key's own tenant (an admin key's too: the API's `?tenant=` lists
others); a page of another tenant's object is a 404 unless the key is an admin's. A worker
running another tenant's job shows as busy, without the job's id or kind.
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import jinja2
from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from service import telemetry_notes, workers_seen
from service.api.deps import PageDep, PrincipalDep, SessionDep, SettingsDep
from service.auth import Principal
from service.config import Settings
from service.db import jobs as job_repo
from service.db import metrics as metric_repo
from service.db import models as model_repo
from service.db.jobs import STATUSES, TERMINAL
from service.errors import ServiceError
from service.events import ID_SCALE
from service.schemas.jobs import job_out
from service.schemas.models import model_out

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
PICTURE_ORDER = ("samples",)  # the sample grid first, then the kind's other pictures


@lru_cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("service.dashboard", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["percent"] = lambda p: f"{100 * float((p or {}).get('fraction') or 0):.0f}"
    env.filters["progress_text"] = _progress_text
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    env.filters["number"] = _number
    env.filters["seconds_ago"] = _seconds_ago
    return env


def _when(value: Any) -> str:
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _seconds_ago(seconds: float) -> str:
    return f"{seconds:.0f} s ago" if seconds >= 10 else f"{seconds:.1f} s ago"


def _progress_text(progress: dict[str, Any] | None) -> str:
    progress = progress or {}
    parts = [f"{100 * float(progress.get('fraction') or 0):.0f}%"]
    if progress.get("epoch") is not None:
        epochs = f"/{progress['epochs']}" if progress.get("epochs") else ""
        parts.append(f"epoch {progress['epoch']}{epochs}")
    if progress.get("step") is not None:
        total = f"/{progress['total_steps']}" if progress.get("total_steps") else ""
        parts.append(f"step {progress['step']}{total}")
    return " · ".join(parts)


def _page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _templates().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-cache"})


def _not_found(exc: ServiceError) -> HTMLResponse:
    return _page("not_found.html", 404, title="Not found", message=exc.message)


def _workers(settings: Settings, session: Session, principal: Principal) -> dict[str, Any]:
    """The live workers (from their heartbeats) and what each runs now (from the database)."""
    try:
        beats = workers_seen.live_workers(settings)
    except Exception as exc:  # no Redis broker, or it is down: /readyz says which
        log.debug("dashboard: workers unavailable: %s", exc)
        return {"known": False, "rows": []}
    running = workers_seen.running_on(session, [b.name for b in beats], principal.scope)
    now = time.time()
    rows = [
        {
            "name": beat.name,
            "queues": beat.queues,
            "age": beat.age(now),
            "jobs": running.get(beat.name, []),
        }
        for beat in sorted(beats, key=lambda b: b.name)
    ]
    return {"known": True, "rows": rows}


@router.get("/", response_class=HTMLResponse)
def jobs_page(
    session: SessionDep,
    page: PageDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] | None = None,
    kind: str | None = None,
) -> HTMLResponse:
    """The job list, newest first; the page refreshes its rows from `GET /v1/jobs`."""
    filters = {"status": status, "kind": kind, "tenant": principal.tenant}
    jobs, next_cursor = job_repo.list_page(session, page, principal.scope, **filters)
    query = {k: v for k, v in (("status", status), ("kind", kind), ("limit", page.limit)) if v}
    query["tenant"] = principal.tenant
    if page.cursor:
        query["cursor"] = page.cursor
    return _page(
        "jobs.html",
        title="Jobs",
        jobs=[job_out(j) for j in jobs],
        statuses=STATUSES,
        status=status,
        kind=kind,
        next_cursor=next_cursor,
        api_query=query,
        workers=_workers(settings, session, principal),
    )


@router.get("/workers", response_class=HTMLResponse)
def workers_page(
    session: SessionDep, principal: PrincipalDep, settings: SettingsDep
) -> HTMLResponse:
    """The live workers: queues, last heartbeat, the job each runs (the caller's tenant's)."""
    return _page("workers.html", title="Workers", workers=_workers(settings, session, principal))


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, session: SessionDep, principal: PrincipalDep) -> HTMLResponse:
    """One job: status, progress, its metric plots and latest values (updated live), its
    equilibrium state, result and spec; metrics undefined for the job are listed apart."""
    try:
        job = job_out(job_repo.get(session, job_id=job_id, scope=principal.scope))
    except ServiceError as exc:
        return _not_found(exc)
    cursor = metric_repo.max_point_id(session, job_id=job_id)
    notes = telemetry_notes.job_notes(
        session,
        job_id=job_id,
        kind=job.kind,
        spec=job.spec,
        latest=metric_repo.latest_values(session, job_id=job_id),
    )
    page_data = {
        "id": job.id,
        "status": job.status,
        "ended": job.status in TERMINAL,
        "events": f"/v1/jobs/{job.id}/events",
        "last_event_id": cursor * ID_SCALE,
        "plot": f"/v1/jobs/{job.id}/metrics.png",
        **notes.page,
    }
    return _page("job.html", title=f"Job {job.name}", job=job, notes=notes, page_data=page_data)


@router.get("/models", response_class=HTMLResponse)
def models_page(
    session: SessionDep, page: PageDep, principal: PrincipalDep, kind: str | None = None
) -> HTMLResponse:
    """The tenant's model registry, newest first."""
    models, next_cursor = model_repo.list_page(
        session, page, principal.scope, kind=kind, tenant=principal.tenant
    )
    items = [model_out(m) for m in models]
    return _page("models.html", title="Models", models=items, next_cursor=next_cursor, kind=kind)


@router.get("/models/{ref}", response_class=HTMLResponse)
def model_page(ref: str, session: SessionDep, principal: PrincipalDep) -> HTMLResponse:
    """One model: what it serves, its evaluation and calibration, and its pictures."""
    try:
        model = model_out(model_repo.resolve(session, ref, scope=principal.scope))
    except ServiceError as exc:
        return _not_found(exc)
    pictures = sorted(
        model.pictures,
        key=lambda p: (PICTURE_ORDER.index(p) if p in PICTURE_ORDER else len(PICTURE_ORDER), p),
    )
    return _page("model.html", title=f"Model {model.name}", model=model, pictures=pictures)


@lru_cache
def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("service.dashboard") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    """The dashboard's own assets (no page loads anything from another host)."""
    found = _static_files().get(name)
    if found is None:
        raise ServiceError("not_found", f"no static file {name!r}")
    body, media_type = found
    return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=300"})


@router.get("/favicon.ico")
def favicon() -> Response:
    body, media_type = _static_files()["favicon.svg"]
    return Response(body, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"})
