"""`thermoml up` end to end: a subprocess on a free port, submit, poll, metrics, Ctrl-C."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.helpers import job_done, processes_with_env, start, stop, wait_for

pytestmark = pytest.mark.integration


def test_embedded_mode_runs_a_job_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    env = {"THERMOML_DATA_DIR": str(tmp_path / "state")}
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URI"):
        env[f"THERMOML_{name}"] = ""
    up = start(["up", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            wait_for(lambda: client.get("/healthz").status_code == 200, 60, "the API")
            assert f"{base}/docs" in log.read_text()
            job = client.post("/v1/jobs", json={"kind": "cooling"}).json()
            done = wait_for(lambda: job_done(client, job["id"]), 60, "the job")
            assert done["status"] == "succeeded", done
            csv = client.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "csv"}).text
            assert csv.splitlines()[0].startswith("step,")
            assert len(csv.splitlines()) == 102
        assert (tmp_path / "state" / "thermoml.db").exists()
        workers = processes_with_env(f"THERMOML_PARENT_PID={up.pid}")
        assert workers, "the embedded worker was not found"
    finally:
        code = stop(up, signal.SIGINT, timeout=40)
        print(log.read_text()[-3000:])
    assert code == 0
    wait_for(lambda: not processes_with_env(f"THERMOML_PARENT_PID={up.pid}"), 10, "no orphans")
