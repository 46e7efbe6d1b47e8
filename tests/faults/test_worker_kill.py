"""SIGKILL in the middle of training: the job resumes from its last checkpoint and ends once.

Two faults: the worker's whole process group (main, pool and job process: a host or container
dies; the lease expires and the API's reconciler publishes the job again for a new worker), and
the job process alone (the out-of-memory killer; the pool process queues the job again itself).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.servers import (
    Stack,
    check_training_history,
    descendants,
    history,
    job_row,
    record,
    wait_terminal,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(240)]

EPOCHS = 5


def spec(name: str) -> dict[str, Any]:
    """~60 steps an epoch on breast_cancer: a kill soon after a checkpoint lands mid-epoch."""
    return {
        "kind": "autoencoder",
        "name": name,
        "dataset": "builtin:breast_cancer",
        "params": {"latent_dim": 4, "hidden": [32, 16]},
        "training": {
            "epochs": EPOCHS,
            "batch_size": 8,
            "seed": 0,
            "telemetry": {"every_steps": 10},
        },
    }


def wait_for_checkpoint(stack: Stack, job_id: str) -> dict[str, Any]:
    """The row once the job has stored a checkpoint (epoch ≥ 1) and is still training."""

    def checkpointed() -> dict[str, Any] | None:
        row = job_row(stack, job_id)
        assert row["status"] in ("queued", "running"), row["status"]
        # The checkpoint's manifest commits just before the flush that records the epoch.
        epoch = (row["progress"] or {}).get("epoch", 0)
        if row["status"] == "running" and row["checkpoint"] and epoch >= 1:
            return row
        return None

    row = wait_until(checkpointed, 120, f"job {job_id} to store a checkpoint", every=0.05)
    epoch = (row["progress"] or {}).get("epoch", 0)
    assert 1 <= epoch < EPOCHS, f"the kill must land mid-training, not at epoch {epoch}"
    return row


def submit_all(stack: Stack, names: list[str]) -> list[str]:
    with stack.client() as client:
        ids = []
        for name in names:
            response = client.post("/v1/jobs", json=spec(name))
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


def check_outcome(
    stack: Stack, ids: list[str], killed: str, scenario: str, **extra: Any
) -> dict[str, Any]:
    with stack.client() as client:
        jobs = wait_terminal(client, ids, timeout=150)
        histories = {job_id: history(client, job_id) for job_id in ids}
    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", job
        check_training_history(job_id, histories[job_id], EPOCHS)
        assert job["result"]["epochs"] == EPOCHS
    victim = jobs[killed]
    assert victim["attempts"] >= 2, victim
    assert victim["result"]["resumed"] is True, victim["result"]
    # The resumed run records the same steps as a run that was never interrupted.
    reference = next(i for i in ids if i != killed and jobs[i]["attempts"] == 1)
    expected = {name: s["steps"] for name, s in histories[reference].items()}
    assert {name: s["steps"] for name, s in histories[killed].items()} == expected
    outcome = {
        "accepted": len(ids),
        "completed": sum(j["status"] == "succeeded" for j in jobs.values()),
        "killed_job_attempts": victim["attempts"],
        "resumed": victim["result"]["resumed"],
        **extra,
    }
    record(scenario, outcome)
    return outcome


def test_worker_process_group_killed_mid_epoch(stack: Stack) -> None:
    ids = submit_all(stack, [f"kill-group-{i}" for i in range(3)])
    first = stack.start_worker()
    running = wait_until(
        lambda: next((i for i in ids if job_row(stack, i)["status"] == "running"), None),
        60,
        "a job to start",
    )
    row = wait_for_checkpoint(stack, running)
    group = [first.pid, *descendants(first.pid)]
    assert len(group) >= 3, f"expected main, pool and job processes, found {group}"
    killed_at = time.monotonic()
    stack.kill_worker(first)
    wait_until(
        lambda: not any(_alive(pid) for pid in group), 10, "every process of the worker to die"
    )
    assert job_row(stack, running)["status"] == "running"  # nobody could record anything

    stack.start_worker()
    retaken = wait_until(
        lambda: job_row(stack, running)["attempts"] >= 2, 90, f"job {running} to be taken over"
    )
    assert retaken
    check_outcome(
        stack,
        ids,
        running,
        "worker_group_sigkill",
        killed_at_epoch=row["progress"]["epoch"],
        reclaimed_after_s=round(time.monotonic() - killed_at, 1),
    )


def test_job_process_killed_is_requeued_by_its_pool_process(stack: Stack) -> None:
    ids = submit_all(stack, [f"kill-job-{i}" for i in range(2)])
    worker = stack.start_worker()
    victim = ids[0]
    wait_until(lambda: job_row(stack, victim)["status"] == "running", 60, "the first job to run")
    row = wait_for_checkpoint(stack, victim)
    pool = [p for p in descendants(worker.pid) if _parent(p) == worker.pid]
    assert len(pool) == 1, f"expected one pool process, found {pool}"
    job_processes = [p for p in descendants(pool[0]) if _parent(p) == pool[0]]
    assert len(job_processes) == 1, f"expected one job process, found {job_processes}"
    os.kill(job_processes[0], signal.SIGKILL)

    requeued = wait_until(
        lambda: job_row(stack, victim)["attempts"] >= 2, 60, f"job {victim} to run again"
    )
    assert requeued
    check_outcome(
        stack,
        ids,
        victim,
        "job_process_sigkill",
        killed_at_epoch=row["progress"]["epoch"],
    )
    # The worker itself lived on: same main and pool process, and it did the second attempt.
    assert worker.poll() is None
    assert _alive(pool[0])
    final = job_row(stack, victim)
    assert final["worker"] == row["worker"], (final["worker"], row["worker"])
    assert "killed by SIGKILL; queueing it again" in stack.tail("worker-1", 200_000)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
