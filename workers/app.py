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
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init

from service.config import get_settings
from service.queue import RUN_JOB_TASK, make_celery

log = logging.getLogger("thermoml.worker")

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
