"""`thermoml up`'s worker, watched: restarted when it exits, given up on after fast failures.

A worker that exits (a crash, the OOM killer, an operator's SIGKILL) is reported with why, its
left-over processes are killed, the jobs it was running go back to their queue (they resume from
their last checkpoint) and, after a back-off, a new worker starts. A worker that keeps dying
soon after it starts is given up on with a message saying so; the API keeps serving, and
`/readyz` answers 503 `no_worker` while jobs wait.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from sqlalchemy import select

from service.config import Settings

log = logging.getLogger("thermoml.supervisor")

FAST_FAILURE = 30.0  # a worker that dies this soon after it started failed fast
MAX_FAST_FAILURES = 5  # in a row, then the supervisor gives up
MAX_BACKOFF = 30.0


def worker_name(queues: str, pid: int) -> str:
    """The Celery node name of `thermoml worker --queues <queues>` running as process `pid`."""
    return f"thermoml-{queues.replace(',', '-')}-{pid}@{socket.gethostname()}"


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


def backoff(fast_failures: int) -> float:
    """Seconds before the next start: 1 s after a worker that lived, doubling while they fail."""
    return min(MAX_BACKOFF, 2.0 ** max(0, fast_failures - 1))


class WorkerSupervisor:
    """Starts `thermoml worker --queues <queues>` and keeps one running until `stop()`."""

    def __init__(self, settings: Settings, env: dict[str, str], queues: str = "cpu,gpu") -> None:
        self.settings, self.env, self.queues = settings, env, queues
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.gave_up = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="thermoml-supervisor", daemon=True)
        self.on_restart: Callable[[], None] | None = None

    def start(self) -> int:
        """Start the first worker and the watching thread; the worker's pid."""
        process = self._spawn()
        self._thread.start()
        return process.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self._lock:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker", "--queues", self.queues],
                env=self.env,
                start_new_session=True,  # Ctrl-C reaches the launcher, which stops it in order
            )
            return self.process

    def _watch(self) -> None:
        fast_failures = 0
        while not self._stopping.is_set():
            process = self.process
            if process is None:
                return
            started = time.monotonic()
            code = process.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - started
            fast_failures = fast_failures + 1 if lived < FAST_FAILURE else 0
            name = worker_name(self.queues, process.pid)
            self._clean_up(process, name)
            if fast_failures >= MAX_FAST_FAILURES:
                self.gave_up = True
                log.error(
                    "the worker %s %d times in a row within %g s of starting; not restarting "
                    "it. Jobs stay queued (/readyz answers 503 no_worker); see the worker's log "
                    "above, fix the cause and run `thermoml up` again.",
                    describe_exit(code),
                    fast_failures,
                    FAST_FAILURE,
                )
                return
            delay = backoff(fast_failures)
            log.warning(
                "the worker (pid %d) %s after %.0f s; starting a new one in %g s",
                process.pid,
                describe_exit(code),
                lived,
                delay,
            )
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            if self.on_restart is not None:
                self.on_restart()
            replacement = self._spawn()
            log.info("worker restarted (pid %d)", replacement.pid)

    def _clean_up(self, process: subprocess.Popen[bytes], name: str) -> None:
        """Kill what the dead worker left (pool and job processes), forget its heartbeat and
        send the jobs it was running back to their queue, to resume from their checkpoint."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        try:
            self._forget(name)
            self._requeue(name, describe_exit(process.returncode or 0))
        except Exception as exc:  # the reconciler still republishes them once their lease ends
            log.warning("could not requeue the jobs of %s now: %s", name, exc)

    def _forget(self, name: str) -> None:
        from service.workers_seen import forget, redis_client

        client = redis_client(self.settings.resolved_broker_url)
        try:
            forget(client, name)
        finally:
            client.close()

    def _requeue(self, name: str, why: str) -> None:
        from service import jobs as lifecycle
        from service.db.session import make_engine, make_sessionmaker
        from service.db.tables import Job
        from service.queue import Publisher

        engine = make_engine(self.settings.resolved_database_url)
        publisher = Publisher(self.settings)
        try:
            sessions = make_sessionmaker(engine)
            with sessions() as session:
                running = session.scalars(
                    select(Job.id).where(Job.status == "running", Job.worker == name)
                ).all()
            for job_id in running:
                with sessions() as session:
                    status = lifecycle.requeue_killed(
                        session,
                        publisher,
                        job_id=job_id,
                        worker=name,
                        sig=why.removeprefix("was killed by "),
                        max_attempts=self.settings.max_attempts,
                    )
                log.warning("job %s lost its worker (which %s): %s", job_id, why, status)
        finally:
            publisher.close()
            engine.dispose()

    def stop(self) -> None:
        """Warm shutdown, then cold, then kill the worker's whole process group."""
        self._stopping.set()
        with self._lock:
            process = self.process
        if process is not None:
            stop_process_group(process)
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def stop_process_group(worker: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGQUIT, 5.0)):
        if worker.poll() is not None:
            break
        try:
            os.killpg(worker.pid, sig)
            worker.wait(timeout=wait)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
    if worker.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
        os.killpg(worker.pid, signal.SIGKILL)
