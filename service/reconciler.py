"""Publishes what the broker never got: the database, not the broker, is the truth of job state.

Two cases: a job accepted while the broker was unreachable (queued, never published), and a
running job whose worker stopped heartbeating (its lease expired): publishing it again lets a
live worker claim it, or fail it as `worker_lost` after `max_attempts`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db.base import utcnow
from service.db.jobs import mark_published, unpublished
from service.db.tables import Job
from service.queue import Publisher

log = logging.getLogger(__name__)


def reconcile_once(
    sessions: sessionmaker[Session], publisher: Publisher, settings: Settings
) -> int:
    """One pass; returns how many jobs were published."""
    now = utcnow()
    lease = dt.timedelta(seconds=settings.job_lease)
    with sessions() as session:
        waiting = unpublished(session, older_than=now - dt.timedelta(seconds=0.5))
        stale = session.execute(
            select(Job.id, Job.queue, Job.priority).where(
                Job.status == "running",
                Job.heartbeat_at < now - lease,
                (Job.published_at.is_(None)) | (Job.published_at < now - lease),
            )
        ).all()
        rows = session.execute(select(Job.id, Job.queue).where(Job.id.in_(waiting))).all()
        queues = {job_id: queue for job_id, queue in rows}
        lost = _lost_in_broker(session, publisher, settings, now)
    published = 0
    for job_id, queue, priority in lost:
        log.warning(
            "job %s is queued but not in the broker's %s queue; publishing again", job_id, queue
        )
        if publisher.publish(job_id, queue=queue, priority=priority):
            with sessions.begin() as session:
                mark_published(session, job_id=job_id)
            published += 1
    for job_id in waiting:
        if publisher.publish(job_id, queue=queues.get(job_id, "cpu")):
            with sessions.begin() as session:
                mark_published(session, job_id=job_id)
            published += 1
    for job_id, queue, priority in stale:
        log.warning("job %s lost its worker (no heartbeat for %s); publishing again", job_id, lease)
        if publisher.publish(job_id, queue=queue, priority=priority):
            with sessions.begin() as session:
                session.execute(update(Job).where(Job.id == job_id).values(published_at=utcnow()))
            published += 1
    return published


def _lost_in_broker(
    session: Session, publisher: Publisher, settings: Settings, now: dt.datetime
) -> list[tuple[str, str, int]]:
    """Published queued jobs the broker no longer holds (Redis restarted without persistence,
    or flushed): their queue is empty although they were published a while ago. A job whose
    message still exists is never claimed twice (the claim), so publishing again is safe."""
    grace = now - dt.timedelta(seconds=settings.lost_message_grace)
    candidates = session.execute(
        select(Job.id, Job.queue, Job.priority).where(
            Job.status == "queued", Job.published_at.is_not(None), Job.published_at < grace
        )
    ).all()
    empty: dict[str, bool] = {}
    lost = []
    for job_id, queue, priority in candidates:
        if queue not in empty:
            depth = publisher.queue_depth(queue)
            empty[queue] = depth == 0
        if empty[queue]:
            lost.append((job_id, queue, priority))
    return lost


class Reconciler:
    """Runs :func:`reconcile_once` every `settings.republish_interval` seconds in a thread."""

    def __init__(
        self, sessions: sessionmaker[Session], publisher: Publisher, settings: Settings
    ) -> None:
        self.sessions, self.publisher, self.settings = sessions, publisher, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="thermoml-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.republish_interval):
            try:
                reconcile_once(self.sessions, self.publisher, self.settings)
            except Exception as exc:  # the database may be down; try again next pass
                log.warning("reconciler pass failed: %s", exc)
