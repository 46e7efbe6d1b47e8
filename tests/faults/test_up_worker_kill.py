"""`thermoml up` watches its worker: SIGKILL it mid-training and a new one takes the job over.

In between, `/readyz` answers 503 `no_worker` naming the queue that holds the job; the new
worker is up within 10 s; the job resumes from its checkpoint and succeeds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.helpers import job_done, processes_with_env, start, stop, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]

SPEC = {
    "kind": "autoencoder",
    "name": "up-kill",
    "dataset": "builtin:breast_cancer",
    "params": {"latent_dim": 4, "hidden": [32, 16]},
    "training": {"epochs": 5, "batch_size": 8, "seed": 0, "telemetry": {"every_steps": 10}},
}


def worker_mains(up_pid: int) -> list[int]:
    """The Celery main processes `up` started (its children running celery)."""
    found = []
    for pid in processes_with_env(f"THERMOML_PARENT_PID={up_pid}"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == up_pid and stat[0] != "Z" and b"celery" in cmdline:
            found.append(pid)
    return found


def live_cpu_workers(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('thermoml_workers{queue="cpu"}'):
            return float(line.split()[-1])
    return -1.0


def test_a_killed_worker_is_replaced_and_its_job_resumes(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    env = {"THERMOML_DATA_DIR": str(tmp_path / "state"), "THERMOML_AUTH": "disabled"}
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URI"):
        env[f"THERMOML_{name}"] = ""
    up = start(["up", "--port", str(port)], env, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, 60, "the API")
            wait_for(lambda: live_cpu_workers(client) == 1, 60, "the worker's heartbeat")
            [first] = worker_mains(up.pid)
            job = client.post("/v1/jobs", json=SPEC).json()

            def mid_training() -> dict[str, Any] | None:
                row = client.get(f"/v1/jobs/{job['id']}").json()
                assert row["status"] in ("queued", "running"), row
                epoch = (row["progress"] or {}).get("epoch", 0)
                return row if row["status"] == "running" and epoch >= 1 else None

            row = wait_for(mid_training, 120, "the job to pass its first epoch")
            assert row["progress"]["epoch"] < 5, "the kill must land mid-training"
            os.kill(first, signal.SIGKILL)
            killed_at = time.monotonic()

            unready: list[dict[str, Any]] = []

            def replaced() -> bool:
                ready = client.get("/readyz")
                if ready.status_code == 503:
                    unready.append(ready.json())
                mains = [p for p in worker_mains(up.pid) if p != first]
                return bool(mains) and live_cpu_workers(client) == 1

            wait_for(replaced, 10, "a new worker", every=0.05)
            replaced_after = time.monotonic() - killed_at
            assert unready, "/readyz never answered 503 while no worker was alive"
            error = unready[0]["error"]
            assert error["code"] == "no_worker", error
            assert error["details"]["queues"] == ["cpu"], error
            assert "cpu" in error["message"]

            done = wait_for(lambda: job_done(client, job["id"]), 150, "the job to end")
            assert done["status"] == "succeeded", done
            assert done["attempts"] >= 2, done
            assert done["result"]["resumed"] is True, done["result"]
            assert done["result"]["epochs"] == 5
            assert client.get("/readyz").status_code == 200
        text = log.read_text()
        assert f"(pid {first}) was killed by SIGKILL" in text
        assert "starting a new one in" in text
        print(f"new worker {replaced_after:.1f} s after the kill")
    finally:
        code = stop(up, signal.SIGINT, timeout=60)
        print(log.read_text()[-4000:])
    assert code == 0
    wait_for(lambda: not processes_with_env(f"THERMOML_PARENT_PID={up.pid}"), 10, "no orphans")
