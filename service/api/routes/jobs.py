"""Jobs: submit, list, read, cancel."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query, Response, status
from sqlalchemy.exc import IntegrityError

from ml.core.spec import JobSpec
from service import datasets
from service.api.deps import PrincipalDep, PublisherDep, SessionDep, SettingsDep
from service.db import jobs as job_repo
from service.db.base import new_id, utcnow
from service.errors import ServiceError
from service.schemas.common import ERROR_RESPONSES
from service.schemas.jobs import JobOut, JobPage, job_out, job_spec_union, openapi_examples

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

SpecBody = Annotated[job_spec_union(), Body(openapi_examples=openapi_examples())]  # type: ignore[valid-type]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Same key and body within 24 h: the same job. Another body: 409.",
    ),
]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
RETRY_AFTER_S = 5


def _request_hash(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def submit_job(
    spec: SpecBody,
    session: SessionDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    response: Response,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Accept a job: the row is committed as `queued` before it is published to the broker.

    If the broker cannot be reached the job is still accepted; it stays `queued` and the
    service publishes it when the broker is back.
    """
    request_hash = _request_hash(spec)
    scope = principal.idempotency_scope
    if idempotency_key:
        replay = _idempotent_replay(session, settings, scope, idempotency_key, request_hash)
        if replay is not None:
            response.headers["Idempotent-Replayed"] = "true"
            return replay
    with session.begin():
        datasets.check_ref(session, spec)
        _check_caps(session, settings, principal.key_id)
    job_id = new_id()
    try:
        with session.begin():
            job = job_repo.create(
                session,
                job_id=job_id,
                kind=spec.kind,
                name=spec.name or f"{spec.kind}-{job_id[:8]}",
                spec=spec.model_dump(mode="json"),
                queue=spec.queue,
                priority=spec.priority,
                idempotency_scope=scope if idempotency_key else None,
                api_key_id=principal.key_id,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
            )
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        session.rollback()
        replay = _idempotent_replay(session, settings, scope, idempotency_key or "", request_hash)
        if replay is None:
            raise
        response.headers["Idempotent-Replayed"] = "true"
        return replay
    if publisher.publish(job.id, queue=job.queue, priority=job.priority):
        with session.begin():
            job_repo.mark_published(session, job_id=job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(job)


def _check_caps(session: Any, settings: Any, key_id: str | None) -> None:
    """429 when the caller already has too many running or queued jobs."""
    counts = job_repo.count_by_status(session, api_key_id=key_id)
    for status_name, cap in (
        ("running", settings.max_running_jobs_per_key),
        ("queued", settings.max_queued_jobs_per_key),
    ):
        if counts.get(status_name, 0) >= cap:
            raise ServiceError(
                "rate_limited",
                f"this key already has {counts[status_name]} {status_name} jobs (the limit is "
                f"{cap}); submit again when some have finished",
                {"status": status_name, "limit": cap, "retry_after": RETRY_AFTER_S},
            )


def _idempotent_replay(
    session: Any, settings: Any, scope: str, key: str, request_hash: str
) -> JobOut | None:
    with session.begin():
        existing = job_repo.find_idempotent(session, scope=scope, key=key)
        if existing is None:
            return None
        age = utcnow() - existing.created_at
        if age > dt.timedelta(seconds=settings.idempotency_ttl):
            job_repo.release_idempotency_key(session, job=existing)
            return None
        if existing.request_hash != request_hash:
            raise ServiceError(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body; "
                "use a new key for a new job",
                {"job_id": existing.id},
            )
        return job_out(existing)


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    status: Status | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """Jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""
    jobs, next_cursor = job_repo.list_page(
        session, status=status, kind=kind, limit=limit, cursor=cursor
    )
    return JobPage(items=[job_out(j) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep) -> JobOut:
    """Status, progress, timestamps, attempts, worker, device, error, result."""
    return job_out(job_repo.get(session, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep) -> JobOut:
    """A queued job is cancelled at once; a running one at its next report. 409 if it ended."""
    with session.begin():
        job = job_repo.request_cancel(session, job_id=job_id)
    return job_out(job)
