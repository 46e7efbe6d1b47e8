"""Publishes what the broker never got: the database, not the broker, is the truth of job state.

Two cases: a job accepted while the broker was unreachable (queued, never published), and a
running job whose worker stopped heartbeating (its lease expired): publishing it again lets a
live worker claim it, or fail it as `worker_lost` after `max_attempts`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import threading
from typing import IO, Any

from sqlalchemy.orm import Session, sessionmaker

from service import jobs as lifecycle
from service.config import Settings
from service.db import jobs as job_reads
from service.db.base import utcnow
from service.queue import Publisher

log = logging.getLogger(__name__)


def reconcile_once(
    sessions: sessionmaker[Session], publisher: Publisher, settings: Settings
) -> int:
    """One pass; returns how many jobs were published. Each goes to its queue at its priority."""
    now = utcnow()
    lease = dt.timedelta(seconds=settings.job_lease)
    with sessions() as session:
        lost = _lost_in_broker(session, publisher, settings, now)
        waiting = job_reads.unpublished(session, older_than=now - dt.timedelta(seconds=0.5))
        stale = job_reads.stale(session, now=now, lease=lease)
    for job in lost:
        log.warning(
            "job %s is queued but not in the broker's %s queue; publishing again", job.id, job.queue
        )
    for job in stale:
        log.warning("job %s lost its worker (no heartbeat for %s); publishing again", job.id, lease)
    published = 0
    with sessions() as session:
        for job in [*lost, *waiting, *stale]:
            published += lifecycle.publish(session, publisher, job)
    return published


def _lost_in_broker(
    session: Session, publisher: Publisher, settings: Settings, now: dt.datetime
) -> list[Any]:
    """Published queued jobs the broker no longer holds (Redis restarted without persistence,
    or flushed): their queue is empty although they were published a while ago. A job whose
    message still exists is never claimed twice (the claim), so publishing again is safe."""
    grace = now - dt.timedelta(seconds=settings.lost_message_grace)
    empty: dict[str, bool] = {}
    lost = []
    for job in job_reads.published_before(session, when=grace):
        if job.queue not in empty:
            empty[job.queue] = publisher.queue_depth(job.queue) == 0
        if empty[job.queue]:
            lost.append(job)
    return lost


class Reconciler:
    """Runs :func:`reconcile_once` every `settings.republish_interval` seconds in a thread.

    Of the API processes sharing a data dir (`thermoml api --workers N`), one reconciles at a
    time: the holder of a lock file, taken over by another process when the holder dies.
    """

    def __init__(
        self, sessions: sessionmaker[Session], publisher: Publisher, settings: Settings
    ) -> None:
        self.sessions, self.publisher, self.settings = sessions, publisher, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="thermoml-reconciler", daemon=True)
        self._lock: IO[bytes] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def holds_lock(self) -> bool:
        """Whether this process reconciles (taking the lock when it is free)."""
        if self._lock is None:
            folder = self.settings.data_dir
            folder.mkdir(parents=True, exist_ok=True)
            handle = (folder / "reconciler.lock").open("ab")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
            self._lock = handle
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.republish_interval):
            try:
                if self.holds_lock():
                    reconcile_once(self.sessions, self.publisher, self.settings)
            except Exception as exc:  # the database may be down; try again next pass
                log.warning("reconciler pass failed: %s", exc)
