"""One fresh process per job, forked from a long-lived, TensorFlow-free pool process.

Celery's pool process never imports TensorFlow; for each job it forks a child that claims and
runs the job, then exits, so TensorFlow state and GPU memory die with the job and a crash costs
one job, not the worker. Forking a warm process costs milliseconds, where replacing the pool
process per task (`max_tasks_per_child=1`) cost hundreds.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import time

from billiard.exceptions import SoftTimeLimitExceeded

from service import jobs as lifecycle
from service.config import get_settings
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


def _quiet_tensorflow() -> None:
    """TensorFlow's C++ start-up messages (a failed CUDA probe logs an error on every machine
    without a GPU) are hidden unless THERMOML_LOG_LEVEL=debug; an explicit TF_CPP_MIN_LOG_LEVEL
    wins. Set before the job imports TensorFlow."""
    if get_settings().log_level != "debug":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _child(job_id: str, worker: str) -> None:
    code = 0
    try:
        _die_with_parent()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        runtime.after_fork()
        _quiet_tensorflow()
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


def resident_bytes(pid: int) -> int:
    """The resident memory of process `pid` (Linux: VmRSS); 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _watch(pid: int, limit: int, interval: float) -> int | None:
    """Wait for the job process; its wait status, or None when its resident memory passed
    `limit` and it was killed. RSS is watched rather than RLIMIT_AS set: TensorFlow reserves
    far more address space than it uses, and an address-space limit breaks it. The wait
    between two reads ends the moment the process exits (a pidfd), so the worker takes its
    next job at once rather than up to `interval` later."""
    exited = _exit_fd(pid)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if resident_bytes(pid) > limit:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            if exited is None:
                time.sleep(interval)
            else:
                exited[0].poll(interval * 1000)
    finally:
        if exited is not None:
            os.close(exited[1])


def _exit_fd(pid: int) -> tuple[select.poll, int] | None:
    """A poll object that wakes when process `pid` exits (a pidfd, Linux 5.3+), and its file
    descriptor; None where pidfds are missing (the wait is then a plain sleep)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
    waiter = select.poll()
    waiter.register(fd, select.POLLIN)
    return waiter, fd


def _fail_dead_job(job_id: str, worker: str, code: str, message: str) -> None:
    """End a job whose process died before it could end the job itself."""
    with runtime.sessions()() as session:
        lifecycle.fail_dead(session, job_id=job_id, worker=worker, code=code, message=message)


def _requeue_killed_job(job_id: str, worker: str, sig: str) -> None:
    """A killed job process: the job goes back to its queue at its priority (or fails as
    `worker_lost` after `max_attempts`); see `service.jobs.requeue_killed`."""
    with runtime.sessions()() as session:
        lifecycle.requeue_killed(
            session,
            runtime.publisher(),
            job_id=job_id,
            worker=worker,
            sig=sig,
            max_attempts=get_settings().max_attempts,
        )


def run_isolated(job_id: str, *, worker: str, time_limit: float) -> None:
    pid = os.fork()
    if pid == 0:
        _child(job_id, worker)
    try:
        _wait_for_child(pid, job_id, worker=worker, time_limit=time_limit)
    finally:
        shutil.rmtree(runtime.work_folder(job_id, pid), ignore_errors=True)
        with contextlib.suppress(OSError):  # the job's folder, once no attempt uses it
            runtime.work_folder(job_id, pid).parent.rmdir()


def _wait_for_child(pid: int, job_id: str, *, worker: str, time_limit: float) -> None:
    settings = get_settings()
    try:
        status = _watch(pid, settings.job_memory_bytes, settings.memory_poll_interval)
    except SoftTimeLimitExceeded:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        message = f"the job ran past its time limit of {time_limit:g} s"
        _fail_dead_job(job_id, worker, "time_limit", message)
        return
    if status is None:
        limit = settings.job_memory_bytes
        message = (
            f"the job's process passed its memory limit of {limit / 2**30:.2f} GiB ({limit} bytes, "
            "THERMOML_JOB_MEMORY_BYTES) and was stopped; make the model, the batch or the data "
            "set smaller"
        )
        log.error("job %s: %s", job_id, message)
        _fail_dead_job(job_id, worker, "out_of_memory", message)
        return
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        log.error("job %s: its process was killed by %s; queueing it again", job_id, sig)
        _requeue_killed_job(job_id, worker, sig)
    elif os.WEXITSTATUS(status) == EXIT_DATABASE_UNAVAILABLE:
        pass  # not failed: once the database is back the lease lapses and the job runs again
    elif os.WEXITSTATUS(status) != 0:
        _fail_dead_job(job_id, worker, "internal", "the job's process failed; see the worker log")
