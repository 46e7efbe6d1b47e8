"""SIGKILL of a job process mid-training: the resumed attempt writes its own TensorBoard event
file, and the run (both attempts' files) holds each of the job's points exactly once, every
metric's steps in order across the files, as the database holds them."""

from __future__ import annotations

import os
import signal
import time

import httpx
import psycopg
import pytest

from tests.faults.servers import Stack, descendants, history, job_row, wait_terminal, wait_until
from tests.faults.test_worker_kill import _parent, wait_for_checkpoint
from workers.event_codec import read_events
from workers.tensorboard import tag_of

# Epochs of ~400 steps measured at every step (over 1 s even on a quiet machine), so that the
# reporter flushes points mid-epoch (every 0.5 s), not only with the epoch-end checkpoint.
SPEC = {
    "kind": "autoencoder",
    "name": "tb resume",
    "dataset": "builtin:digits",
    "params": {"latent_dim": 4, "hidden": [256, 256], "architecture": "dense"},
    "training": {
        "epochs": 10,
        "batch_size": 4,
        "seed": 0,
        "telemetry": {"every_steps": 1, "microbatches": 2},
    },
}
# The step of the last epoch end (its checkpoint) and the last measuring point's step.
POSITION = (
    "SELECT (SELECT progress->>'step' FROM jobs WHERE id = %s), "
    "(SELECT max(step) FROM metric_points WHERE job_id = %s AND name = 'internal_energy')"
)
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(480)]


def test_a_resumed_job_has_each_point_once_in_tensorboard(stack: Stack) -> None:
    with stack.client() as client:
        answer = client.post("/v1/jobs", json=SPEC)
        assert answer.status_code == 202, answer.text
        victim = answer.json()["id"]
    worker = stack.start_worker()
    wait_until(lambda: job_row(stack, victim)["status"] == "running", 60, "the job to run")
    wait_for_checkpoint(stack, victim)
    (pool,) = [p for p in descendants(worker.pid) if _parent(p) == worker.pid]
    (job_process,) = [p for p in descendants(pool) if _parent(p) == pool]
    # The kill lands once a point past the last checkpoint is stored (and so in the file): the
    # next attempt resumes from that checkpoint and records those steps again.
    with psycopg.connect(stack.postgres.dsn) as conn:
        conn.autocommit = True

        def past_the_checkpoint() -> bool:
            row = conn.execute(POSITION, (victim, victim)).fetchone()
            return row is not None and row[1] is not None and row[1] > int(row[0])

        wait_until(past_the_checkpoint, 120, "a point past the checkpoint", every=0.01)
        time.sleep(0.05)  # the file is written right after the commit; an epoch takes ~1 s
        os.kill(job_process, signal.SIGKILL)
        position = conn.execute(POSITION, (victim, victim)).fetchone()
    assert position is not None
    checkpoint_step = int(position[0])
    wait_until(lambda: job_row(stack, victim)["attempts"] >= 2, 60, "the job to run again")
    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        (job,) = wait_terminal(client, [victim], timeout=300).values()
        series = history(client, victim)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job

    run = (
        stack.folder / "state" / "artifacts" / "tensorboard" / "default" / f"tb-resume-{victim[:8]}"
    )
    files = sorted(p for p in run.iterdir() if "tfevents" in p.name)
    assert [p.name[-4:] for p in files] == [".001", ".002"], files
    assert read_events(files[0].read_bytes())[-1].step > checkpoint_step  # the overlap
    steps: dict[str, list[int]] = {}
    for path in files:
        for item in read_events(path.read_bytes()):
            for tag in item.scalars:
                steps.setdefault(tag, []).append(item.step)
    stored = {
        tag_of(name): [
            s for s, v in zip(points["steps"], points["values"], strict=True) if v is not None
        ]
        for name, points in series.items()
    }
    assert steps == {tag: s for tag, s in stored.items() if s}
