"""Job rows: create, read, list, cancel, and the worker's claim / heartbeat / finish."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.tables import Job
from service.errors import ServiceError

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def get(session: Session, *, job_id: str) -> Job:
    """The job, or 404."""
    job = session.get(Job, job_id)
    if job is None:
        raise ServiceError("not_found", f"job {job_id} does not exist")
    return job


def create(
    session: Session,
    *,
    job_id: str,
    kind: str,
    name: str,
    spec: dict[str, Any],
    queue: str,
    priority: int,
    idempotency_scope: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    api_key_id: str | None = None,
) -> Job:
    """Insert a queued job row (the caller commits, then publishes)."""
    job = Job(
        id=job_id,
        kind=kind,
        name=name,
        spec=spec,
        queue=queue,
        priority=priority,
        status="queued",
        progress={"fraction": 0.0},
        attempts=0,
        cancel_requested=False,
        idempotency_scope=idempotency_scope,
        idempotency_key=idempotency_key,
        api_key_id=api_key_id,
        request_hash=request_hash,
        created_at=utcnow(),
    )
    session.add(job)
    return job


def find_idempotent(session: Session, *, scope: str, key: str) -> Job | None:
    """The job created with this Idempotency-Key in this scope, if any."""
    return session.scalars(
        select(Job).where(Job.idempotency_scope == scope, Job.idempotency_key == key)
    ).first()


def release_idempotency_key(session: Session, *, job: Job) -> None:
    """Free an expired key so that a new job may take it."""
    job.idempotency_key = None
    job.idempotency_scope = None
    session.flush()


def count_by_status(session: Session, *, api_key_id: str | None) -> dict[str, int]:
    """Queued and running jobs of one API key (None: jobs submitted without a key)."""
    owner = Job.api_key_id == api_key_id if api_key_id else Job.api_key_id.is_(None)
    rows = session.execute(
        select(Job.status, func.count())
        .where(owner, Job.status.in_(("queued", "running")))
        .group_by(Job.status)
    )
    return {status: int(count) for status, count in rows}


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = json.loads(base64.urlsafe_b64decode(padded))
        return dt.datetime.fromisoformat(created), str(job_id)
    except (ValueError, TypeError) as exc:
        raise ServiceError("validation_error", "cursor is not one this service issued") from exc


def list_page(
    session: Session,
    *,
    status: str | None,
    kind: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[Sequence[Job], str | None]:
    """Newest first; the cursor is the last row's (created_at, id)."""
    query = select(Job)
    if status:
        query = query.where(Job.status == status)
    if kind:
        query = query.where(Job.kind == kind)
    if cursor:
        created, last_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id))
        )
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    jobs = list(rows)
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


def request_cancel(session: Session, *, job_id: str) -> Job:
    """A queued job ends now; a running one is flagged and ends at its next report.

    Cancelling a cancelled job answers the job again; any other ended job is a 409.
    """
    status = get(session, job_id=job_id).status
    if status == "queued":
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status="cancelled", finished_at=utcnow(), cancel_requested=True)
        )
    elif status == "running":
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(cancel_requested=True)
        )
    job = get(session, job_id=job_id)
    session.refresh(job)
    if job.status in TERMINAL and job.status != "cancelled":
        raise ServiceError(
            "invalid_state", f"job {job_id} already ended as {job.status}; it cannot be cancelled"
        )
    return job


def mark_published(session: Session, *, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(published_at=utcnow()))


def unpublished(session: Session, *, older_than: dt.datetime, limit: int = 100) -> list[str]:
    """Queued jobs whose publication failed (the broker was unreachable at submit time)."""
    query = (
        select(Job.id)
        .where(Job.status == "queued", Job.published_at.is_(None), Job.created_at < older_than)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.scalars(query))


# --- the worker's side -------------------------------------------------------------------


def claim(
    session: Session, *, job_id: str, worker: str, lease_s: float, max_attempts: int
) -> int | None:
    """Take the job if it is queued, or running with an expired lease; the attempt number.

    A conditional update, so two deliveries of one job cannot both run it while its worker lives.
    """
    now = utcnow()
    expired = now - dt.timedelta(seconds=lease_s)
    claimable = or_(
        Job.status == "queued",
        and_(Job.status == "running", Job.heartbeat_at < expired),
    )
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, claimable, Job.attempts < max_attempts)
        .values(
            status="running",
            attempts=Job.attempts + 1,
            worker=worker,
            heartbeat_at=now,
            started_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        _fail_if_exhausted(session, job_id=job_id, expired=expired, max_attempts=max_attempts)
        return None
    return int(session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0)


def _fail_if_exhausted(
    session: Session, *, job_id: str, expired: dt.datetime, max_attempts: int
) -> None:
    session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == "running",
            Job.heartbeat_at < expired,
            Job.attempts >= max_attempts,
        )
        .values(
            status="failed",
            error_code="worker_lost",
            error_message=f"the job's worker stopped {max_attempts} times; giving up",
            finished_at=utcnow(),
        )
    )


def _owned(job_id: str, attempt: int) -> Any:
    return and_(Job.id == job_id, Job.attempts == attempt, Job.status == "running")


def heartbeat(
    session: Session, *, job_id: str, attempt: int, progress: dict[str, Any] | None = None
) -> tuple[bool, bool]:
    """Renew the lease (and progress); (still ours, cancellation requested)."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    result = session.execute(update(Job).where(_owned(job_id, attempt)).values(**values))
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return result.rowcount == 1, bool(cancel)  # type: ignore[attr-defined]


def save_checkpoint(
    session: Session, *, job_id: str, attempt: int, manifest: dict[str, Any] | None
) -> bool:
    """Record the manifest of the job's last stored checkpoint if this attempt still owns it."""
    result = session.execute(update(Job).where(_owned(job_id, attempt)).values(checkpoint=manifest))
    return result.rowcount == 1  # type: ignore[attr-defined]


def finish(
    session: Session,
    *,
    job_id: str,
    attempt: int,
    status: str,
    result: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    device: str | None = None,
    progress: dict[str, Any] | None = None,
    model_id: str | None = None,
) -> bool:
    """End the job if this attempt still owns it."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "error_code": error_code,
        "error_message": error_message,
    }
    for key, value in (
        ("result", result),
        ("device", device),
        ("progress", progress),
        ("model_id", model_id),
    ):
        if value is not None:
            values[key] = value
    outcome = session.execute(update(Job).where(_owned(job_id, attempt)).values(**values))
    return outcome.rowcount == 1  # type: ignore[attr-defined]
