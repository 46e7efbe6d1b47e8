"""One fresh process per job, forked from a long-lived, TensorFlow-free pool process.

Celery's pool process never imports TensorFlow; for each job it forks a child that claims and
runs the job, then exits, so TensorFlow state and GPU memory die with the job and a crash costs
one job, not the worker. Forking a warm process costs milliseconds, where replacing the pool
process per task (`max_tasks_per_child=1`) cost hundreds.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal

from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select, update

from service.config import get_settings
from service.db.base import utcnow
from service.db.tables import Job
from service.queue import RUN_JOB_TASK
from workers import runtime

log = logging.getLogger("thermoml.worker")
PR_SET_PDEATHSIG = 1
# The job process's exit status when the database went away mid-job (EX_TEMPFAIL): the job is
# neither failed nor requeued here; its lease lapses and the reconciler publishes it again.
EXIT_DATABASE_UNAVAILABLE = 75


def _die_with_parent() -> None:
    """Linux: the job process is killed if its pool process dies (e.g. hard time limit)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the lease and the reconciler still recover the job
        pass


def _child(job_id: str, worker: str) -> None:
    code = 0
    try:
        _die_with_parent()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        runtime.after_fork()
        from workers.execute import DatabaseUnavailable, execute

        try:
            execute(job_id, worker=worker)
        except DatabaseUnavailable as exc:
            log.warning(
                "job %s: the database is unreachable (%s); the job is left to its lease "
                "and another attempt",
                job_id,
                exc.__cause__,
            )
            code = EXIT_DATABASE_UNAVAILABLE
    except BaseException:
        log.exception("job %s: its process failed", job_id)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _fail_dead_job(job_id: str, worker: str, code: str, message: str) -> None:
    """End a job whose process died before it could end the job itself."""
    with runtime.sessions().begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running", Job.worker == worker)
            .values(status="failed", error_code=code, error_message=message, finished_at=utcnow())
        )


def _requeue_killed_job(job_id: str, worker: str, sig: str) -> None:
    """A job whose process was killed (the OOM killer, an operator) goes back to the queue and
    resumes from its last checkpoint; after `max_attempts` claims it fails as `worker_lost`."""
    settings = get_settings()
    with runtime.sessions().begin() as session:
        requeued = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == "running",
                Job.worker == worker,
                Job.attempts < settings.max_attempts,
            )
            .values(status="queued", worker=None, heartbeat_at=None, published_at=None)
        ).rowcount  # type: ignore[attr-defined]
        queue = session.scalar(select(Job.queue).where(Job.id == job_id))
    if not requeued:
        message = (
            f"the job's process was killed by {sig} on each of {settings.max_attempts} attempts "
            "(out of memory?)"
        )
        _fail_dead_job(job_id, worker, "worker_lost", message)
        return
    from workers.app import app

    try:
        app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue or "cpu")
        with runtime.sessions().begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(published_at=utcnow()))
    except Exception as exc:  # the API's reconciler publishes jobs left unpublished
        log.warning("job %s: could not publish it again (%s); the reconciler will", job_id, exc)


def run_isolated(job_id: str, *, worker: str, time_limit: float) -> None:
    pid = os.fork()
    if pid == 0:
        _child(job_id, worker)
    try:
        _, status = os.waitpid(pid, 0)
    except SoftTimeLimitExceeded:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        message = f"the job ran past its time limit of {time_limit:g} s"
        _fail_dead_job(job_id, worker, "time_limit", message)
        return
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        log.error("job %s: its process was killed by %s; queueing it again", job_id, sig)
        _requeue_killed_job(job_id, worker, sig)
    elif os.WEXITSTATUS(status) == EXIT_DATABASE_UNAVAILABLE:
        pass  # not failed: once the database is back the lease lapses and the job runs again
    elif os.WEXITSTATUS(status) != 0:
        _fail_dead_job(job_id, worker, "internal", "the job's process failed; see the worker log")
