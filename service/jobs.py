"""The job lifecycle, in one place: every write of a job row happens here.

    submit ──► queued ──publish──► claim ──► running ──heartbeat / checkpoint──► finish
                 ▲                               │                              (succeeded,
                 └── requeue (process killed) ◄──┤                               failed,
                 └── republish (reconciler) ◄────┘ lease expired                 cancelled)

A job is written as `queued` and committed before it is published; every publish carries the
job's queue and priority, whoever publishes it (the submit, the reconciler, a requeue). A worker
owns a running job through its attempt number: heartbeats, checkpoints and the end only land
while the row is still `running` under that attempt (see DESIGN.md, "Claiming").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import and_, false, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ml.core.spec import JobSpec
from service import datasets, models
from service.auth import Principal
from service.config import Settings
from service.db import jobs as reads
from service.db.base import new_id, utcnow
from service.db.tables import Job
from service.db.tenancy import Scope
from service.errors import ServiceError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


class Publisher(Protocol):
    def publish(self, job_id: str, *, queue: str, priority: int = 5) -> bool: ...


class Publishable(Protocol):  # a job row, or a selected (id, queue, priority) row
    id: str
    queue: str
    priority: int


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool  # an Idempotency-Key replay: the job of an earlier request


# --- submit -------------------------------------------------------------------------------


def submit(
    session: Session,
    publisher: Publisher,
    settings: Settings,
    *,
    spec: JobSpec,
    principal: Principal,
    idempotency_key: str | None = None,
) -> Submitted:
    """Validate against the data, apply the caps, insert the row as `queued`, commit, publish.

    If the broker cannot be reached the job is still accepted; it stays `queued`, unpublished,
    and the reconciler publishes it when the broker is back.
    """
    request_hash = _request_hash(spec)
    scope = principal.idempotency_scope
    if idempotency_key:
        replay = _replay(session, settings, scope, idempotency_key, request_hash)
        if replay is not None:
            return Submitted(replay, replayed=True)
    with session.begin():
        datasets.check_ref(session, spec, settings, scope=principal.scope)
        spec = models.pin_refs(session, spec, scope=principal.scope)
    job_id = new_id()
    try:
        with session.begin():
            _serialize_submits(session, scope)
            # A request with the same key may have committed its job while this one waited.
            key = idempotency_key
            if key and (earlier := reads.find_idempotent(session, scope, key)) is not None:
                return Submitted(_same_body(earlier, request_hash), replayed=True)
            _check_caps(session, settings, principal.key_id)
            job = create(session, spec, job_id, principal)
            job.request_hash = request_hash
            if key:
                job.idempotency_key, job.idempotency_scope = key, scope
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        session.rollback()
        replay = _replay(session, settings, scope, idempotency_key or "", request_hash)
        if replay is None:
            raise
        return Submitted(replay, replayed=True)
    publish(session, publisher, job)
    return Submitted(job, replayed=False)


def create(session: Session, spec: JobSpec, job_id: str, owner: Principal | None = None) -> Job:
    """Insert a queued job row for `spec` (the caller commits, then publishes), owned by the
    `owner`'s key and tenant (without one, tenant `default`)."""
    job = Job(
        id=job_id,
        kind=spec.kind,
        name=spec.name or f"{spec.kind}-{job_id[:8]}",
        spec=spec.model_dump(mode="json"),
        queue=spec.queue,
        priority=spec.priority,
        status="queued",
        progress={"fraction": 0.0},
        attempts=0,
        cancel_requested=False,
        created_at=utcnow(),
    )
    if owner is not None:
        job.api_key_id, job.tenant = owner.key_id, owner.tenant
    session.add(job)
    return job


def _request_hash(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(
    session: Session, settings: Settings, scope: str, key: str, request_hash: str
) -> Job | None:
    """The job an earlier request with this key made; None when there is none (or it expired,
    which frees the key); 409 when the key came with another body."""
    with session.begin():
        existing = reads.find_idempotent(session, scope, key)
        if existing is None:
            return None
        if utcnow() - existing.created_at > dt.timedelta(seconds=settings.idempotency_ttl):
            existing.idempotency_key = None
            existing.idempotency_scope = None
            return None
        return _same_body(existing, request_hash)


def _same_body(existing: Job, request_hash: str) -> Job:
    """The earlier job of an Idempotency-Key; 409 when it came with another body."""
    if existing.request_hash != request_hash:
        raise ServiceError(
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body; "
            "use a new key for a new job",
            {"job_id": existing.id},
        )
    return existing


def _serialize_submits(session: Session, scope: str) -> None:
    """Make the caps' count and the insert after it one step for this caller: concurrent
    submits of one key wait here for each other, until the transaction ends (a count then an
    insert, unlocked, let 24 of 30 concurrent submits past a cap of 5)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:lock))"),
            {"lock": f"thermoml-submit:{scope}"},
        )
    else:  # SQLite has one writer at a time: taking the write lock first orders the submits
        session.execute(update(Job).where(false()).values(status=Job.status))


def _check_caps(session: Session, settings: Settings, key_id: str | None) -> None:
    """429 when the caller already has too many running or queued jobs."""
    counts = reads.count_by_status(session, api_key_id=key_id)
    for status, cap in (
        ("running", settings.max_running_jobs_per_key),
        ("queued", settings.max_queued_jobs_per_key),
    ):
        if counts.get(status, 0) >= cap:
            raise ServiceError(
                "rate_limited",
                f"this key already has {counts[status]} {status} jobs (the limit is "
                f"{cap}); submit again when some have finished",
                {"status": status, "limit": cap, "retry_after": RETRY_AFTER_S},
            )


# --- publish, republish, requeue ----------------------------------------------------------


def publish(session: Session, publisher: Publisher, job: Publishable) -> bool:
    """Send the job's id to its queue at its priority; record when it was sent.

    False when the broker could not be reached: the job keeps its state and the reconciler
    tries again. The session must have no transaction open.
    """
    if not publisher.publish(job.id, queue=job.queue, priority=job.priority):
        return False
    with session.begin():
        session.execute(update(Job).where(Job.id == job.id).values(published_at=utcnow()))
    return True


def requeue_killed(
    session: Session, publisher: Publisher, *, job_id: str, worker: str, sig: str, max_attempts: int
) -> str:
    """A job whose process was killed (the OOM killer, an operator) goes back to its queue, at
    its priority, and resumes from its last checkpoint; after `max_attempts` claims it fails as
    `worker_lost`. The job's new status."""
    with session.begin():
        requeued = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == "running",
                Job.worker == worker,
                Job.attempts < max_attempts,
            )
            .values(status="queued", worker=None, heartbeat_at=None, published_at=None)
        ).rowcount  # type: ignore[attr-defined]
        row = session.execute(
            select(Job.id, Job.queue, Job.priority).where(Job.id == job_id)
        ).one_or_none()
    if not requeued or row is None:
        message = (
            f"the job's process was killed by {sig} on each of {max_attempts} attempts "
            "(out of memory?)"
        )
        fail_dead(session, job_id=job_id, worker=worker, code="worker_lost", message=message)
        return "failed"
    if not publish(session, publisher, row):
        log.warning("job %s: could not publish it again; the reconciler will", job_id)
    return "queued"


def fail_dead(session: Session, *, job_id: str, worker: str, code: str, message: str) -> None:
    """End a running job whose process died before it could end the job itself."""
    with session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running", Job.worker == worker)
            .values(status="failed", error_code=code, error_message=message, finished_at=utcnow())
        )


# --- cancel ---------------------------------------------------------------------------------


def cancel(session: Session, *, job_id: str, scope: Scope) -> Job:
    """A queued job (that `scope` reaches) ends now; a running one is flagged and ends at its
    next report. Cancelling a cancelled job answers the job again; any other ended job is a 409.
    """
    job = reads.get(session, job_id=job_id, scope=scope)
    if job.status == "queued":
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status="cancelled", finished_at=utcnow(), cancel_requested=True)
        )
    elif job.status == "running":
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(cancel_requested=True)
        )
    session.refresh(job)
    if job.status in reads.TERMINAL and job.status != "cancelled":
        raise ServiceError(
            "invalid_state", f"job {job_id} already ended as {job.status}; it cannot be cancelled"
        )
    return job


# --- the worker's side ----------------------------------------------------------------------


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
    cancel_requested = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return result.rowcount == 1, bool(cancel_requested)  # type: ignore[attr-defined]


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
    """End the job (and drop its checkpoint manifest) if this attempt still owns it."""
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "checkpoint": None}
    values |= {"error_code": error_code, "error_message": error_message}
    extra = {"result": result, "device": device, "progress": progress, "model_id": model_id}
    values |= {key: value for key, value in extra.items() if value is not None}
    outcome = session.execute(update(Job).where(_owned(job_id, attempt)).values(**values))
    return outcome.rowcount == 1  # type: ignore[attr-defined]
