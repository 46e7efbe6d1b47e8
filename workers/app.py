"""The Celery application of the workers (`thermoml worker`, or `celery -A workers.app worker`).

TensorFlow is never imported here, nor in the pool process: each job runs in a fresh process
forked from the pool process (`workers/isolation.py`) that imports what its kind needs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown

from service import workers_seen
from service.config import get_settings
from service.queue import RUN_JOB_TASK, make_celery

log = logging.getLogger("thermoml.worker")

if os.environ.get("THERMOML_PARENT_PID"):
    # Under `thermoml up` everything runs as the user who started it (root in a container too),
    # with JSON messages only: Celery's root warning says nothing they could act on.
    warnings.filterwarnings("ignore", "You're running the worker with superuser privileges")

settings = get_settings()
app: Celery = make_celery(settings)
app.conf.update(
    task_soft_time_limit=settings.job_time_limit,
    # The hard limit kills a child that ignores the soft one; the lease then expires.
    task_time_limit=settings.job_time_limit + 30,
)


@app.task(name=RUN_JOB_TASK, bind=True, acks_late=True, ignore_result=True)
def run_job(self: Any, job_id: str) -> None:
    from workers.isolation import run_isolated

    worker = self.request.hostname or f"pid-{os.getpid()}"
    run_isolated(job_id, worker=worker, time_limit=settings.job_time_limit)


@worker_init.connect
def _preload(**_: Any) -> None:
    """Import what every job needs (never TensorFlow) once in the parent, so each fresh child
    starts warm instead of spending ~0.4 s on imports."""
    import workers.execute  # noqa: F401
    from ml.core.registry import list_kinds

    list_kinds()


@worker_process_init.connect
def _pool_process_started(**_: Any) -> None:
    from workers import runtime

    runtime.reset()
    try:
        runtime.warm()
    except Exception as exc:  # the database may be down now; jobs will connect when they run
        log.warning("could not warm the database connection: %s", exc)


@worker_init.connect
def _watch_parent(**_: Any) -> None:
    """Under `thermoml up`, stop when the launcher dies, so no worker is left orphaned."""
    expected = os.environ.get("THERMOML_PARENT_PID")
    if not expected:
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if str(os.getppid()) != expected:
                log.warning("launcher %s is gone; stopping the worker", expected)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="thermoml-parent-watch", daemon=True).start()


class Heartbeat:
    """Writes this worker's heartbeat key (see service/workers_seen.py) from a thread of the
    main process: alive means the process that takes messages from the broker is alive."""

    def __init__(self, name: str, queues: list[str]) -> None:
        self.name, self.queues = name, queues
        self.interval = settings.worker_heartbeat_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="thermoml-heartbeat", daemon=True)
        self._client = workers_seen.redis_client(settings.resolved_broker_url)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            workers_seen.forget(self._client, self.name)
        except Exception as exc:  # the broker is gone: the key expires by itself
            log.info("could not remove the heartbeat of %s: %s", self.name, exc)
        self._client.close()

    def _loop(self) -> None:
        from celery.worker import state

        failing = False
        while True:
            jobs = [str(r.args[0]) for r in list(state.active_requests) if r.args]
            try:
                workers_seen.beat(
                    self._client,
                    name=self.name,
                    queues=self.queues,
                    jobs=jobs,
                    ttl=workers_seen.MISSED_BEATS * self.interval,
                )
                if failing:
                    log.info("heartbeats reach the broker again")
                failing = False
            except Exception as exc:  # the broker may be restarting; keep trying
                if not failing:
                    log.warning("could not write a heartbeat: %s", exc)
                failing = True
            if self._stop.wait(self.interval):
                return


_heartbeat: Heartbeat | None = None


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Once the worker consumes, it says so every `worker_heartbeat_interval` seconds."""
    global _heartbeat
    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    _heartbeat = Heartbeat(sender.hostname, queues)
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
