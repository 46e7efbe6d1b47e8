"""The broker side shared by the API and the workers: Celery configuration, publish by name.

The API never imports `workers/` (nor TensorFlow): it publishes the task `thermoml.run_job`
by name with the job id as its only argument, after the job row has committed.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from service.config import Settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "thermoml.run_job"
QUEUES = ("cpu", "gpu")
# kombu's Redis transport keeps one list per priority step and, by default, only four steps
# (0, 3, 6, 9): priorities 7, 8 and 9 shared a list and were served first come, first served.
# One step per priority makes every level count. Lists of the default steps keep their names.
REDIS_PRIORITY_STEPS = tuple(range(10))


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    # A message not acknowledged within the visibility timeout is delivered again; it must
    # outlast the longest job, or Redis would hand a running job to a second worker.
    return {
        "priority_steps": list(REDIS_PRIORITY_STEPS),
        "visibility_timeout": int(settings.job_time_limit + 4 * settings.job_lease + 60),
        "socket_connect_timeout": settings.publish_timeout,
        "socket_timeout": max(settings.publish_timeout, 5.0),
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": broker_transport_options(settings),
        "broker_connection_timeout": settings.publish_timeout,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": "cpu",
        "task_create_missing_queues": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        # Task events and worker heartbeats (with `thermoml worker`'s event heartbeat on):
        # what Flower and `celery events` show. Each is one PUBLISH on the broker.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "enable_utc": True,
    }


def make_celery(settings: Settings) -> Celery:
    app = Celery("thermoml", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class Publisher:
    """Publishes job ids; a failure is reported, never raised (the job stays queued)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Celery | None = None

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = make_celery(self.settings)
        return self._app

    def publish(self, job_id: str, *, queue: str, priority: int = 5) -> bool:
        if self.settings.resolved_broker_url.startswith("redis"):  # redis, rediss, redis+socket
            priority = 9 - priority  # kombu's Redis transport serves 0 first; ours: 9 first
        try:
            self.app.send_task(
                RUN_JOB_TASK,
                args=[job_id],
                queue=queue,
                priority=priority,
                retry=True,
                retry_policy={
                    "max_retries": 1,
                    "interval_start": 0,
                    "interval_step": 0.2,
                    "interval_max": 0.2,
                },
            )
        except Exception as exc:  # kombu raises a family of connection errors
            log.warning("could not publish job %s to %s: %s", job_id, queue, exc)
            return False
        return True

    def queue_depth(self, queue: str) -> int | None:
        """Messages waiting in `queue` (None when the broker cannot say or cannot be reached)."""
        try:
            with self.app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, timeout=self.settings.publish_timeout)
                _, count, _ = conn.default_channel.queue_declare(queue=queue, passive=True)
                return int(count)
        except Exception as exc:  # a queue never declared is empty
            if "NOT_FOUND" in str(exc) or "not found" in str(exc).lower():
                return 0
            log.debug("queue depth of %s unavailable: %s", queue, exc)
            return None

    def ping(self) -> None:
        """Raise if the broker cannot be reached."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=self.settings.publish_timeout)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None
