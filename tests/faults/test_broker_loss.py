"""Redis loses every message: it restarts with its data dropped while jobs wait in it.

No worker runs while the messages sit in Redis, so nothing has been delivered when Redis dies.
Jobs submitted while Redis is down are accepted (202) and left unpublished. The database is
the truth: the API's reconciler publishes the unpublished jobs, and publishes again the queued
jobs whose queue it finds empty although they were published; a worker started after the
restart runs each job exactly once.
"""

from __future__ import annotations

import re
import time

import pytest
import redis

from tests.faults.servers import (
    Stack,
    check_series_unique,
    history,
    job_row,
    record,
    wait_terminal,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(240)]

SPEC = {"kind": "cooling", "params": {"method": "rk4", "duration": 10, "dt": 0.1}}
STEPS = list(range(101))  # duration / dt = 100 steps, each recorded, and step 0
SERIES = {"time", "temperature", "entropy_total", "entropy_production", "heat"}
QUEUED_BEFORE = 8
SUBMITTED_DURING_OUTAGE = 3


def queued_messages(stack: Stack) -> int:
    """Messages waiting in Redis for the `cpu` queue, over kombu's priority sub-queues."""
    conn = redis.Redis.from_url(stack.redis.url)
    try:
        keys = [k for k in conn.keys("cpu*") if b"_kombu" not in k]  # type: ignore[operator]
        return sum(int(conn.llen(k)) for k in keys)  # type: ignore[arg-type]
    finally:
        conn.close()


def test_redis_restart_without_data_loses_no_job(stack: Stack) -> None:
    ids: list[str] = []
    with stack.client() as client:
        for i in range(QUEUED_BEFORE):
            response = client.post("/v1/jobs", json={**SPEC, "name": f"before-{i}"})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        assert all(job_row(stack, i)["published_at"] is not None for i in ids)
        assert queued_messages(stack) == QUEUED_BEFORE

        stack.redis.stop(kill=True)  # a crash: no persistence, every message is gone
        during = []
        for i in range(SUBMITTED_DURING_OUTAGE):
            started = time.monotonic()
            response = client.post("/v1/jobs", json={**SPEC, "name": f"during-{i}"})
            elapsed = time.monotonic() - started
            assert response.status_code == 202, response.text
            assert elapsed < 5, f"a submit with the broker down took {elapsed:.1f} s"
            during.append(response.json()["id"])
        assert all(job_row(stack, i)["published_at"] is None for i in during)
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        ids += during

        stack.redis.start()  # a fresh, empty server on the same port
        assert queued_messages(stack) == 0
        # The reconciler publishes the never-published jobs at its next pass. The queued jobs
        # whose messages died with the old server it publishes again once their queue is seen
        # empty (here: when the worker has taken the jobs that were published meanwhile).
        wait_until(
            lambda: all(job_row(stack, i)["published_at"] is not None for i in during),
            30,
            "the jobs accepted during the outage to be published",
        )
        assert all(job_row(stack, i)["status"] == "queued" for i in ids)

        stack.start_worker()
        jobs = wait_terminal(client, ids, timeout=120)
        histories = {job_id: history(client, job_id) for job_id in ids}

    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1, job
        series = histories[job_id]
        check_series_unique(job_id, series)
        assert set(series) == SERIES, (job_id, sorted(series))
        for name, points in series.items():
            assert points["steps"] == STEPS, (job_id, name, points["steps"])
    worker_log = stack.tail("worker-1", 1_000_000)
    runs = re.findall(r"job (\S+) \(cooling\) attempt (\d+) started", worker_log)
    assert sorted(job for job, _ in runs) == sorted(ids), "each job must run exactly once"
    api_log = stack.tail("api", 1_000_000)
    republished = len(re.findall(r"is queued but not in the broker's", api_log))
    assert republished >= QUEUED_BEFORE, "the lost messages were never published again"
    record(
        "redis_restart_data_dropped",
        {
            "accepted": len(ids),
            "accepted_while_broker_down": len(during),
            "completed": sum(j["status"] == "succeeded" for j in jobs.values()),
            "runs": len(runs),
            "max_attempts_seen": max(j["attempts"] for j in jobs.values()),
            "lost_messages_republished": republished,
        },
    )
