"""The database-backed reporter: batched metric upserts, progress, heartbeat, cancellation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ml.core.reporting import JobCancelled, JobFailed
from service import jobs as lifecycle
from service.db import metrics as metric_repo
from service.db.metrics import Point

log = logging.getLogger("thermoml.worker")

FLUSH_INTERVAL_S = 0.5
FLUSH_POINTS = 2000


class JobLost(Exception):
    """Another attempt owns the job now (this worker's lease had expired)."""


class DbReporter:
    """Buffers points and progress; a flush writes them, renews the lease, may stop the job."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        job_id: str,
        attempt: int,
        deadline: float,
        time_limit: float,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.attempt = attempt
        self.deadline = deadline
        self.time_limit = time_limit
        self._points: list[Point] = []
        self._progress: dict[str, Any] | None = None
        self._last_flush = 0.0
        self.on_checkpoint: Callable[[], None] | None = None
        # Given each batch of points once the database holds them and this attempt still owns
        # the job (the worker's TensorBoard event file); it must not raise.
        self.on_points: Callable[[list[Point]], None] | None = None

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        self._points.extend((name, int(step), float(v)) for name, v in values.items())
        self._maybe_flush()

    def progress(self, fraction: float, **info: Any) -> None:
        self._progress = {"fraction": max(0.0, min(1.0, float(fraction))), **info}
        self._maybe_flush()

    def checkpoint(self) -> None:
        """Hand the checkpoint folder to `on_checkpoint` (set by the worker when it can store).

        The points recorded so far are written first: a later attempt resumes after the
        checkpoint and never records them again, so they must not depend on a later flush.
        """
        self.flush()
        if self.on_checkpoint is not None:
            self.on_checkpoint()

    @property
    def last_progress(self) -> dict[str, Any] | None:
        return self._progress

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_INTERVAL_S or len(self._points) >= FLUSH_POINTS:
            self.flush()

    def flush(self, *, check: bool = True) -> None:
        """Write what is buffered; with `check`, raise if the job must stop."""
        points, self._points = self._points, []
        with self.sessions.begin() as session:
            metric_repo.upsert(session, job_id=self.job_id, points=points)
            owned, cancel = lifecycle.heartbeat(
                session, job_id=self.job_id, attempt=self.attempt, progress=self._progress
            )
        self._last_flush = time.monotonic()
        if owned and points and self.on_points is not None:
            self.on_points(points)
        if not check:
            return
        if not owned:
            raise JobLost(self.job_id)
        if cancel:
            raise JobCancelled(self.job_id)
        if self._last_flush > self.deadline:
            raise JobFailed(
                "time_limit", f"the job ran past its time limit of {self.time_limit:g} s"
            )


class Heartbeat:
    """Renews the job's lease from a thread, so a long step between reports keeps the job."""

    def __init__(self, sessions: sessionmaker[Session], *, job_id: str, attempt: int, every: float):
        self.sessions, self.job_id, self.attempt, self.every = sessions, job_id, attempt, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="thermoml-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with self.sessions.begin() as session:
                    lifecycle.heartbeat(session, job_id=self.job_id, attempt=self.attempt)
            except Exception as exc:  # the database may be briefly down; the lease has slack
                log.warning("heartbeat of job %s failed: %s", self.job_id, exc)
