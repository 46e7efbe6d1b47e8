"""Unreachable database or broker: clear 503s, and no accepted job is lost."""

from __future__ import annotations

import time

import pytest
import redis
from fastapi.testclient import TestClient

from service.config import Settings
from service.db.tenancy import EVERYONE
from service.main import create_app
from service.queue import Publisher
from service.reconciler import reconcile_once
from tests.conftest import RecordingPublisher, free_port, submit

REDIS = "redis://127.0.0.1:6379/0"


def queued_messages(conn: redis.Redis, queue: str) -> int:
    """Messages in a kombu Redis queue, over its priority sub-queues."""
    keys = [k for k in conn.keys(f"{queue}*") if not k.startswith(b"_kombu")]
    return sum(int(conn.llen(k)) for k in keys)  # type: ignore[arg-type]


def test_database_unreachable_gives_503_not_500(settings: Settings) -> None:
    dead = settings.model_copy(
        update={"database_url": f"postgresql+psycopg://root@127.0.0.1:{free_port()}/test"}
    )
    app = create_app(dead, reconcile=False)
    app.state.publisher = RecordingPublisher()
    with TestClient(app) as client:
        for method, path, body in (
            ("post", "/v1/jobs", {"kind": "cooling"}),
            ("get", "/v1/jobs", None),
            ("get", "/v1/jobs/x", None),
        ):
            response = client.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["error"]["code"] == "unavailable"
            assert "Retry-After" in response.headers
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["checks"]["database"].startswith("unavailable")
        assert client.get("/healthz").status_code == 200


def test_broker_down_at_submit_keeps_the_job_and_publishes_it_later(settings: Settings) -> None:
    """The job is accepted (202) and stays queued; the reconciler publishes it when the
    broker is back. Uses the real Redis as the broker that "comes back"."""
    down = settings.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "publish_timeout": 0.5}
    )
    app = create_app(down, reconcile=False)
    with TestClient(app) as client:
        job = submit(client, {"kind": "cooling"})
        row = client.get(f"/v1/jobs/{job['id']}").json()
        assert row["status"] == "queued"
        assert client.get("/readyz").json()["error"]["details"]["checks"]["broker"] != "ok"
        queue = f"thermoml-test-{job['id'][:8]}"
        conn = redis.Redis.from_url(REDIS)
        # The broker "returns": the reconciler publishes through a working publisher.
        up = down.model_copy(update={"broker_url": REDIS})
        publisher = Publisher(up)
        app.state.publisher = publisher
        from service.db import jobs as job_repo

        with app.state.sessions.begin() as session:
            job_repo.get(session, job_id=job["id"], scope=EVERYONE).queue = queue
        time.sleep(0.6)  # the reconciler leaves jobs younger than 0.5 s to the request
        try:
            assert reconcile_once(app.state.sessions, publisher, up) == 1
            assert queued_messages(conn, queue) == 1
            assert reconcile_once(app.state.sessions, publisher, up) == 0  # published once
        finally:
            for key in conn.keys(f"*{queue}*"):
                conn.delete(key)
            publisher.close()


@pytest.mark.parametrize("timeout", [0.5])
def test_publish_to_a_dead_broker_returns_quickly(settings: Settings, timeout: float) -> None:
    dead = settings.model_copy(
        update={"broker_url": f"redis://127.0.0.1:{free_port()}/0", "publish_timeout": timeout}
    )
    publisher = Publisher(dead)
    start = time.monotonic()
    assert publisher.publish("some-job", queue="cpu") is False
    assert time.monotonic() - start < 5
    publisher.close()


def test_jobs_lost_by_the_broker_are_published_again_once(settings: Settings) -> None:
    """Redis flushed (or restarted without persistence) after publishing: the reconciler
    finds queued jobs whose queue is empty and publishes them again — once."""
    broker = "redis://127.0.0.1:6379/6"
    conn = redis.Redis.from_url(broker)
    conn.flushdb()
    live = settings.model_copy(update={"broker_url": broker, "lost_message_grace": 0.01})
    app = create_app(live, reconcile=False)
    try:
        with TestClient(app) as client:
            job = submit(client, {"kind": "cooling", "name": "lost"})
            publisher = app.state.publisher
            assert publisher.queue_depth("cpu") == 1
            time.sleep(0.05)
            assert reconcile_once(app.state.sessions, publisher, live) == 0  # still there
            conn.flushdb()  # the broker loses the message
            assert publisher.queue_depth("cpu") == 0
            assert reconcile_once(app.state.sessions, publisher, live) == 1
            assert publisher.queue_depth("cpu") == 1
            time.sleep(0.05)
            assert reconcile_once(app.state.sessions, publisher, live) == 0
            assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    finally:
        conn.flushdb()
