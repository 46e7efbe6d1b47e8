"""Soak: 500 small `cooling` jobs, submitted over HTTP in bursts of 50, to a real `thermoml up`
(its private Redis broker, SQLite, its own data dir and port). Every job succeeds at its first
attempt, all on the one worker that was there at the start: the supervisor restarted nothing.

The time bound is a hang guard, not a performance target (bench/queue_latency.py measures).
"""

from __future__ import annotations

import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.helpers import start, stop, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURSTS, BURST = 10, 50
JOBS = BURSTS * BURST
# Five Euler steps: the job is over in milliseconds, so the soak measures the path around it.
SPEC = {"kind": "cooling", "params": {"duration": 0.5, "dt": 0.1, "method": "euler"}}
DRAIN_TIMEOUT = 360.0  # seconds for all 500 to end; generous for 2 loaded cores
SUBMITTERS = 8  # concurrent connections within a burst
WORKER = re.compile(r'thermoml_worker_heartbeat_age_seconds\{worker="([^"]+)"\}')
RESTART_LINES = ("starting a new one", "worker restarted", "not restarting it", "lost its worker")


def live_workers(client: httpx.Client) -> set[str]:
    return set(WORKER.findall(client.get("/metrics").text))


def submit_burst(client: httpx.Client, pool: ThreadPoolExecutor, burst: int) -> list[str]:
    def one(i: int) -> str:
        body = {**SPEC, "name": f"soak-{burst}-{i}"}
        answer = client.post("/v1/jobs", json=body)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    return list(pool.map(one, range(BURST)))


def waiting(client: httpx.Client) -> int:
    """Jobs not yet ended (queued or running), up to one page of each."""
    return sum(
        len(client.get("/v1/jobs", params={"status": s, "limit": 500}).json()["items"])
        for s in ("queued", "running")
    )


def all_jobs(client: httpx.Client) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        jobs += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return jobs


def test_500_jobs_in_bursts_all_succeed_on_one_worker(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    env = {"THERMOML_DATA_DIR": str(tmp_path / "state")}
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URI"):
        env[f"THERMOML_{name}"] = ""
    env["THERMOML_AUTH"] = env["THERMOML_METRICS_AUTH"] = "disabled"
    up = start(["up", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        limits = httpx.Limits(max_connections=SUBMITTERS, max_keepalive_connections=SUBMITTERS)
        with (
            httpx.Client(base_url=base, timeout=30, limits=limits) as client,
            ThreadPoolExecutor(SUBMITTERS) as pool,
        ):
            wait_for(lambda: client.get("/readyz").status_code == 200, 90, "the API")
            workers = wait_for(lambda: live_workers(client), 30, "the worker's heartbeat")
            assert len(workers) == 1, workers
            (worker,) = workers

            started = time.monotonic()
            submitted: list[str] = []
            for burst in range(BURSTS):
                submitted += submit_burst(client, pool, burst)
                time.sleep(0.5)  # the queue is still draining when the next burst comes
            wait_for(lambda: waiting(client) == 0, DRAIN_TIMEOUT, "every job to end", every=1.0)
            seconds = time.monotonic() - started

            jobs = {job["id"]: job for job in all_jobs(client)}
            assert live_workers(client) == {worker}, "the worker seen at the start, still alone"
            metrics = client.get("/metrics").text
        assert len(set(submitted)) == JOBS and set(jobs) == set(submitted)
        failed = [j for j in jobs.values() if j["status"] != "succeeded"]
        assert not failed, failed[:3]
        assert {j["attempts"] for j in jobs.values()} == {1}, "a job was run twice"
        assert {j["worker"] for j in jobs.values()} == {worker}
        assert all(j["result"]["final_temperature"] is not None for j in jobs.values())
        assert f'thermoml_jobs{{kind="cooling",status="succeeded"}} {JOBS}.0' in metrics
        print(f"{JOBS} jobs in {seconds:.1f} s ({JOBS / seconds:.1f} jobs/s) on {worker}")
    finally:
        code = stop(up, signal.SIGINT, timeout=40)
    text = log.read_text()
    assert code == 0, text[-3000:]
    restarts = [line for line in text.splitlines() if any(s in line for s in RESTART_LINES)]
    assert not restarts, restarts
    assert " ERROR " not in text and "ERROR/" not in text and "CRITICAL" not in text, text[-3000:]
