"""`thermoml up` end to end: a subprocess on a free port, submit, poll, metrics, Ctrl-C; and its
private Redis server, whose append-only file keeps queued messages across a restart."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from service.embedded_redis import EmbeddedRedis, socket_path
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
            assert client.get("/readyz").json()["status"] == "ready"
            metrics = client.get("/metrics").text
            assert 'thermoml_workers{queue="cpu"} 1.0' in metrics
            assert 'thermoml_workers{queue="gpu"} 1.0' in metrics
            assert "thermoml_worker_heartbeat_age_seconds{worker=" in metrics
        broker = socket_path(tmp_path / "state")
        assert broker.is_socket(), "the private Redis server listens under the data dir"
        assert f"redis+socket://{broker}" in log.read_text()
        assert (tmp_path / "state" / "thermoml.db").exists()
        workers = processes_with_env(f"THERMOML_PARENT_PID={up.pid}")
        assert workers, "the embedded worker was not found"
    finally:
        code = stop(up, signal.SIGINT, timeout=40)
        print(log.read_text()[-3000:])
    assert code == 0
    wait_for(lambda: not processes_with_env(f"THERMOML_PARENT_PID={up.pid}"), 10, "no orphans")
    assert not broker.exists(), "Redis removes its socket when it stops"
    assert (tmp_path / "state" / "redis" / "appendonly.aof").exists()
    text = log.read_text()
    # A clean Ctrl-C logs no ERROR; no root warning, no CUDA probe error from TensorFlow.
    assert " ERROR " not in text and "ERROR/" not in text, text[-3000:]
    assert "superuser privileges" not in text
    assert "cuInit" not in text


def test_the_private_redis_keeps_queued_messages_across_a_restart(tmp_path: Path) -> None:
    import redis

    server = EmbeddedRedis(tmp_path / "state")
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket))
        client.rpush("cpu", b"message-1", b"message-2")
        client.close()
    finally:
        server.stop()
    assert not server.socket.exists()
    again = EmbeddedRedis(tmp_path / "state")
    again.start()
    try:
        client = redis.Redis(unix_socket_path=str(again.socket))
        assert client.lrange("cpu", 0, -1) == [b"message-1", b"message-2"]
        client.close()
    finally:
        again.stop()
