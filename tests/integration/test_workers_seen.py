"""Workers seen through their heartbeats: /readyz `no_worker`, and `up`'s supervisor giving up.

Against a real Redis: the data dir's private server, as `thermoml up` runs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from service import supervisor, workers_seen
from service.config import Settings
from service.embedded_redis import EmbeddedRedis
from tests.conftest import RecordingPublisher, submit

pytestmark = pytest.mark.integration
COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}


@pytest.fixture
def broker(settings: Settings) -> Iterator[redis.Redis]:
    server = EmbeddedRedis(settings.data_dir)
    server.start()
    client = redis.Redis(unix_socket_path=str(server.socket), socket_timeout=2)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def test_readyz_names_each_queue_with_queued_jobs_and_no_live_worker(
    client: TestClient, broker: redis.Redis
) -> None:
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    assert client.get("/readyz").status_code == 200  # no worker, but nothing waits either
    submit(client, COOLING)
    submit(client, COOLING)
    submit(client, {**COOLING, "resources": {"gpu": True}})

    response = client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    error = response.json()["error"]
    assert error["code"] == "no_worker"
    assert error["details"]["queues"] == ["cpu", "gpu"]
    assert error["details"]["queued"] == {"cpu": 2, "gpu": 1}
    assert "queue cpu (2 jobs queued), queue gpu (1 job queued)" in error["message"]

    workers_seen.beat(broker, name="w@h", queues=["cpu"], jobs=[], ttl=30)
    error = client.get("/readyz").json()["error"]
    assert error["details"]["queues"] == ["gpu"]

    workers_seen.beat(broker, name="g@h", queues=["gpu"], jobs=[], ttl=30)
    assert client.get("/readyz").status_code == 200

    broker.pexpire(workers_seen.key_of("g@h"), 1)  # it stopped beating: its key expires
    assert client.get("/readyz").json()["error"]["details"]["queues"] == ["gpu"]


def test_a_worker_that_keeps_failing_fast_is_given_up_on(
    settings: Settings,
    broker: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(supervisor, "backoff", lambda failures: 0.01)
    # An unknown queue: `thermoml worker` refuses it and exits with code 2 at once.
    watched = supervisor.WorkerSupervisor(settings, dict(os.environ), queues="nope")
    caplog.set_level(logging.INFO, logger="thermoml.supervisor")
    watched.start()
    watched._thread.join(timeout=60)
    assert not watched._thread.is_alive()
    assert watched.gave_up
    assert watched.restarts == supervisor.MAX_FAST_FAILURES - 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("exited with code 2" in m and "starting a new one" in m for m in messages)
    assert any("not restarting it" in m for m in messages), messages
    watched.stop()
