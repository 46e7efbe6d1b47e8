"""Reading job rows. Every write of a job row is in `service/jobs.py`, the lifecycle."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import pagination
from service.db.tables import Job
from service.db.tenancy import Scope
from service.errors import ServiceError

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def get(session: Session, *, job_id: str, scope: Scope) -> Job:
    """The job, if `scope` reaches it; 404 otherwise (another tenant's job is as absent as a
    missing one)."""
    job = session.get(Job, job_id)
    if job is None or not scope.reaches(job.tenant):
        raise not_found(job_id)
    return job


def not_found(job_id: str) -> ServiceError:
    return ServiceError("not_found", f"job {job_id} does not exist")


def find_idempotent(session: Session, scope: str, key: str) -> Job | None:
    """The job created with this Idempotency-Key in this scope, if any."""
    return session.scalars(
        select(Job).where(Job.idempotency_scope == scope, Job.idempotency_key == key)
    ).first()


def count_by_status(session: Session, *, api_key_id: str | None) -> dict[str, int]:
    """Queued and running jobs of one API key (None: jobs submitted without a key)."""
    owner = Job.api_key_id == api_key_id if api_key_id else Job.api_key_id.is_(None)
    rows = session.execute(
        select(Job.status, func.count())
        .where(owner, Job.status.in_(("queued", "running")))
        .group_by(Job.status)
    )
    return {status: int(count) for status, count in rows}


def list_page(
    session: Session, page: pagination.PageRequest, scope: Scope, **equal: str | None
) -> tuple[Sequence[Job], str | None]:
    """The jobs `scope` reaches, newest first, filtered on status, kind or tenant (`equal`)."""
    return pagination.filtered_page(session, Job, page, scope, **equal)


def unpublished(session: Session, *, older_than: dt.datetime, limit: int = 100) -> list[Any]:
    """Queued jobs whose publication failed (the broker was unreachable at submit time):
    (id, queue, priority) rows, oldest first."""
    query = (
        select(Job.id, Job.queue, Job.priority)
        .where(Job.status == "queued", Job.published_at.is_(None), Job.created_at < older_than)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.execute(query).all())


def stale(session: Session, *, now: dt.datetime, lease: dt.timedelta) -> list[Any]:
    """Running jobs whose worker stopped heartbeating a lease ago, not republished since:
    (id, queue, priority) rows."""
    return list(
        session.execute(
            select(Job.id, Job.queue, Job.priority).where(
                Job.status == "running",
                Job.heartbeat_at < now - lease,
                (Job.published_at.is_(None)) | (Job.published_at < now - lease),
            )
        ).all()
    )


def published_before(session: Session, *, when: dt.datetime) -> list[Any]:
    """Queued jobs published before `when`: (id, queue, priority) rows."""
    return list(
        session.execute(
            select(Job.id, Job.queue, Job.priority).where(
                Job.status == "queued", Job.published_at.is_not(None), Job.published_at < when
            )
        ).all()
    )
