"""Flower sees `thermoml up`'s worker and its tasks: task events and heartbeats are on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.embedded_redis import broker_url
from tests.conftest import free_port
from tests.integration.helpers import job_done, start, stop, wait_for

pytestmark = pytest.mark.integration
pytest.importorskip("flower")


def test_flower_finds_the_worker_and_a_run_job_task(tmp_path: Path) -> None:
    port, flower_port = free_port(), free_port()
    log = tmp_path / "up.log"
    env = {"THERMOML_DATA_DIR": str(tmp_path / "state"), "THERMOML_AUTH": "disabled"}
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URI"):
        env[f"THERMOML_{name}"] = ""
    up = start(["up", "--port", str(port)], env, log)
    flower: subprocess.Popen[bytes] | None = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, 60, "the API")
            flower = subprocess.Popen(
                [sys.executable, "-m", "celery", "--broker", broker_url(tmp_path / "state"),
                 "flower", "--address=127.0.0.1", f"--port={flower_port}"],
                env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"},
                stdout=(tmp_path / "flower.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            base = f"http://127.0.0.1:{flower_port}"
            wait_for(lambda: httpx.get(f"{base}/healthcheck").status_code == 200, 30, "Flower")
            job = client.post("/v1/jobs", json={"kind": "cooling"}).json()
            done = wait_for(lambda: job_done(client, job["id"]), 60, "the job")
            assert done["status"] == "succeeded"

            def workers() -> dict[str, Any]:
                found = httpx.get(f"{base}/api/workers", params={"refresh": "1"}, timeout=10)
                assert found.status_code == 200, found.text
                return found.json()  # type: ignore[no-any-return]

            names = wait_for(workers, 30, "Flower to list the worker", every=0.5)
            assert any(name.startswith("thermoml-cpu-gpu-") for name in names), names

            def run_job_tasks() -> list[dict[str, Any]]:
                tasks = httpx.get(f"{base}/api/tasks", timeout=10).json()
                return [t for t in tasks.values() if t.get("name") == "thermoml.run_job"]

            tasks = wait_for(run_job_tasks, 30, "Flower to see a thermoml.run_job task", every=0.5)
            assert tasks[0]["state"] == "SUCCESS", tasks[0]
            assert job["id"] in str(tasks[0]["args"])
    finally:
        if flower is not None:
            stop(flower, signal.SIGTERM, timeout=10)
            print((tmp_path / "flower.log").read_text()[-2000:])
        code = stop(up, signal.SIGINT, timeout=40)
        print(log.read_text()[-2000:])
    assert code == 0
