"""A job keeps its priority however it reaches the broker again: republished by the reconciler
(never published, or its worker lost) or requeued after its process was killed. Checked on the
real Redis broker by the order in which it hands the messages out."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from migrations import upgrade
from service import jobs as lifecycle
from service.config import Settings, get_settings
from service.db.tables import Job
from service.queue import Publisher
from service.reconciler import reconcile_once
from tests.workers.test_execute import make_job
from tests.workers.test_isolation import suicidal  # noqa: F401  (the fixture)
from workers import runtime
from workers.isolation import run_isolated

pytestmark = pytest.mark.integration
BROKER = "redis://127.0.0.1:6379/8"  # a database of its own, flushed by the test


@pytest.fixture
def on_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """An embedded database, the real Redis as the broker (for the worker side too)."""
    redis.Redis.from_url(BROKER).flushdb()
    monkeypatch.setenv("THERMOML_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("THERMOML_BROKER_URL", BROKER)
    for name in ("DATABASE_URL", "ARTIFACT_URI"):
        monkeypatch.delenv(f"THERMOML_{name}", raising=False)
    get_settings.cache_clear()
    runtime.reset()
    settings = get_settings()
    upgrade(settings.resolved_database_url)
    yield settings
    runtime.reset()
    get_settings.cache_clear()
    redis.Redis.from_url(BROKER).flushdb()


def delivery_order(settings: Settings) -> list[str]:
    """Job ids in the order the broker hands out the `cpu` queue's messages."""
    publisher = Publisher(settings)
    order = []
    try:
        with publisher.app.connection_for_read() as conn:
            channel = conn.default_channel
            while (message := channel.basic_get("cpu", no_ack=True)) is not None:
                args, _kwargs, _embed = message.decode()
                order.append(args[0])
    finally:
        publisher.close()
    return order


def set_row(job_id: str, **values: object) -> None:
    with runtime.sessions().begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_republished_and_requeued_jobs_keep_their_priority(
    on_redis: Settings,
    suicidal: None,  # noqa: F811
) -> None:
    sessions = runtime.sessions()
    publisher = Publisher(on_redis)
    low = [make_job(kind="suicidal", priority=7) for _ in range(2)]
    for job_id in low:  # published as a submit publishes them
        with sessions() as session:
            assert lifecycle.publish(session, publisher, queue_row(job_id))

    # Killed: its process dies by SIGKILL on attempt 1; the worker requeues it.
    killed = make_job({"die_on_attempts": [1]}, kind="suicidal", priority=8)
    run_isolated(killed, worker="w", time_limit=60)
    assert read_status(killed) == "queued"

    # Never published (the broker was down at submit), and old enough for the reconciler.
    unpublished = make_job(kind="suicidal", priority=9)
    set_row(unpublished, created_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5))
    # Running, but its worker stopped heartbeating a long while ago.
    stale = make_job(kind="suicidal", priority=8)
    with sessions.begin() as session:
        lifecycle.claim(session, job_id=stale, worker="dead", lease_s=60, max_attempts=3)
    set_row(stale, heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))

    assert reconcile_once(sessions, publisher, on_redis) == 2
    publisher.close()
    assert delivery_order(on_redis) == [unpublished, killed, stale, *low]


def queue_row(job_id: str) -> Any:
    with runtime.sessions()() as session:
        return session.execute(
            select(Job.id, Job.queue, Job.priority).where(Job.id == job_id)
        ).one()


def read_status(job_id: str) -> str:
    with runtime.sessions()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status
