"""PostgreSQL restarts at once, and later stops for seconds, under requests and a training job.

A client submits jobs and lists them for ~22 s while the database is first restarted at once
(`pg_ctl restart -m fast`), then stopped for 5 s and started again. While it is down every
request that needs it answers 503 `unavailable` quickly (never 500, never a hang); when it is
back requests succeed again without restarting the API. An autoencoder that is training when
the database goes away is not failed: it runs again and resumes from its checkpoint. Every job
answered 202 ends succeeded with its whole metric history.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.faults.servers import (
    Stack,
    check_series_unique,
    check_training_history,
    history,
    record,
    wait_terminal,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(240)]

SPEC = {"kind": "cooling", "params": {"method": "rk4", "duration": 2, "dt": 0.1}}
STEPS = list(range(21))
TRAINING_EPOCHS = 80  # ~0.2 s each: it trains through the whole stream
TRAINING = {
    "kind": "autoencoder",
    "name": "training-across-outages",
    "dataset": "builtin:breast_cancer",
    "params": {"latent_dim": 4, "hidden": [32, 16]},
    "training": {
        "epochs": TRAINING_EPOCHS,
        "batch_size": 8,
        "seed": 0,
        "telemetry": {"every_steps": 10},
    },
}
DURATION_S = 22.0
RESTART_AT_S, STOP_AT_S, START_AT_S = 4.0, 10.0, 15.0
MAX_LATENCY_S = 4.0  # "fails fast": a request never waits longer than this
RECOVERY_S = 2.0  # after the database is back, requests must succeed from this long on


@dataclass
class Call:
    started: float
    method: str
    status: int | None  # None: no answer (timeout or a dropped connection)
    seconds: float
    error: str | None = None
    job_id: str | None = None


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    try:
        stack.start(worker=False)
        stack.start_worker(concurrency=2)  # the training job and the stream's jobs side by side
        yield stack
    finally:
        stack.dump_logs()
        stack.postgres_log = stack.postgres.server_log()[-3000:]  # type: ignore[attr-defined]
        print(stack.postgres_log)  # type: ignore[attr-defined]
        stack.close()


def client_loop(base_url: str, origin: float, stop: threading.Event, calls: list[Call]) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        i = 0
        while not stop.is_set():
            i += 1
            method = "POST" if i % 2 else "GET"
            started = time.monotonic()
            try:
                if method == "POST":
                    response = client.post("/v1/jobs", json={**SPEC, "name": f"stream-{i}"})
                else:
                    response = client.get("/v1/jobs", params={"limit": 20})
            except httpx.HTTPError as exc:
                calls.append(
                    Call(started - origin, method, None, time.monotonic() - started, repr(exc))
                )
                continue
            call = Call(started - origin, method, response.status_code, 0.0)
            call.seconds = time.monotonic() - started
            if response.status_code == 202:
                call.job_id = response.json()["id"]
            elif response.status_code >= 400:
                call.error = response.text[:300]
                if response.status_code == 503:
                    assert response.json()["error"]["code"] == "unavailable"
                    assert "Retry-After" in response.headers
            calls.append(call)
            time.sleep(0.02)


def test_database_restart_under_requests(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post("/v1/jobs", json=TRAINING)
        assert response.status_code == 202, response.text
        training = response.json()["id"]
        wait_until(
            lambda: client.get(f"/v1/jobs/{training}").json()["progress"].get("epoch", 0) >= 1,
            120,
            "the training job to finish an epoch",
        )
    calls: list[Call] = []
    stop = threading.Event()
    origin = time.monotonic()
    loop = threading.Thread(target=client_loop, args=(stack.base_url, origin, stop, calls))
    loop.start()
    marks: dict[str, float] = {}
    try:
        time.sleep(RESTART_AT_S)
        marks["restarting"] = time.monotonic() - origin
        stack.postgres.restart("fast")  # disconnects every client, shuts down, starts again
        marks["up_again"] = time.monotonic() - origin
        time.sleep(max(0.0, STOP_AT_S - marks["up_again"]))
        with stack.client() as client:
            training_state = client.get(f"/v1/jobs/{training}").json()
        marks["stopping"] = time.monotonic() - origin
        stack.postgres.stop("fast")  # disconnects every client, then shuts down
        marks["down"] = time.monotonic() - origin
        time.sleep(max(0.0, START_AT_S - marks["down"]))
        marks["starting"] = time.monotonic() - origin
        stack.postgres.start()
        marks["up"] = time.monotonic() - origin
        time.sleep(max(0.0, DURATION_S - marks["up"]))
    finally:
        stop.set()
        loop.join(30)
    assert not loop.is_alive()

    statuses = Counter(c.status for c in calls)
    print(f"marks: {marks}; statuses: {dict(statuses)}")
    no_answer = [c for c in calls if c.status is None]
    assert not no_answer, f"requests without an answer: {no_answer[:5]}"
    errors = [c for c in calls if c.status not in (200, 202, 503)]
    assert not errors, f"unexpected answers: {errors[:5]}"
    slow = [c for c in calls if c.seconds > MAX_LATENCY_S]
    assert not slow, f"requests that hung: {slow[:5]}"
    down = [
        c for c in calls if marks["down"] <= c.started and c.started + c.seconds < marks["starting"]
    ]
    assert down, "no request was made while the database was down"
    assert all(c.status == 503 for c in down), [c for c in down if c.status != 503][:5]
    for back, until in ((marks["up_again"], marks["stopping"]), (marks["up"], DURATION_S + 1)):
        after = [
            c for c in calls if back + RECOVERY_S <= c.started and c.started + c.seconds < until
        ]
        assert after, f"no request between {back + RECOVERY_S:.1f} s and {until:.1f} s"
        failed = [c for c in after if c.status not in (200, 202)]
        assert not failed, f"the API did not recover: {failed[:5]}"

    accepted = [c.job_id for c in calls if c.job_id]
    with stack.client() as client:
        jobs = wait_terminal(client, [training, *accepted], timeout=150)
        histories = {job_id: history(client, job_id) for job_id in jobs}
    outcomes = Counter(job["status"] for job in jobs.values())
    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", job
        series = histories[job_id]
        check_series_unique(job_id, series)
        if job_id == training:
            check_training_history(job_id, series, TRAINING_EPOCHS)
            if training_state["status"] == "running":  # the outage outlasted its lease
                assert job["attempts"] >= 2, job
                assert job["result"]["resumed"] is True, job["result"]
            continue
        for name, points in series.items():
            assert points["steps"] == STEPS, (job_id, name, points["steps"])
    record(
        "postgres_stop_start_and_restart",
        {
            "requests": len(calls),
            "answers": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "answers_while_down": dict(Counter(str(c.status) for c in down)),
            "max_latency_s": round(max(c.seconds for c in calls), 3),
            "max_latency_while_down_s": round(max(c.seconds for c in down), 3),
            "accepted": len(accepted) + 1,
            "completed": outcomes.get("succeeded", 0),
            "training_job": {
                "status_when_stopped": training_state["status"],
                "epoch_when_stopped": training_state["progress"].get("epoch"),
                "attempts": jobs[training]["attempts"],
                "resumed": jobs[training]["result"]["resumed"],
            },
            "attempts_max": max(job["attempts"] for job in jobs.values()),
            "outcomes": dict(outcomes),
            "marks_s": {k: round(v, 2) for k, v in marks.items()},
        },
    )
