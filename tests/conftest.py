"""Shared fixtures: a migrated SQLite database per test, an app, and inline job execution."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings, get_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def served(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free port from a thread; its base URL."""
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_level="warning", timeout_graceful_shutdown=2
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        uv.should_exit = True
        thread.join(10)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings for an isolated embedded instance; also what `get_settings()` returns."""
    monkeypatch.setenv("THERMOML_DATA_DIR", str(tmp_path / "state"))
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URI"):
        monkeypatch.delenv(f"THERMOML_{name}", raising=False)
    get_settings.cache_clear()
    from workers import runtime

    runtime.reset()
    current = get_settings()
    from migrations import upgrade

    upgrade(current.resolved_database_url)
    yield current
    runtime.reset()
    get_settings.cache_clear()


class RecordingPublisher:
    """Stands in for the broker: records what was published; can run jobs inline."""

    def __init__(self, run_inline: bool = False, up: bool = True) -> None:
        self.published: list[tuple[str, str, int]] = []
        self.run_inline = run_inline
        self.up = up

    def publish(self, job_id: str, *, queue: str, priority: int = 5) -> bool:
        if not self.up:
            return False
        self.published.append((job_id, queue, priority))
        if self.run_inline:
            from workers.execute import execute

            execute(job_id, worker="inline-test")
        return True

    def ping(self) -> None:
        if not self.up:
            raise ConnectionError("broker down")

    def close(self) -> None:
        pass


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher(run_inline=True)


@pytest.fixture
def client(settings: Settings, publisher: RecordingPublisher) -> Iterator[TestClient]:
    from service.main import create_app

    app = create_app(settings, reconcile=False)
    app.state.publisher = publisher
    with TestClient(app) as test_client:
        yield test_client


def submit(client: TestClient, spec: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=spec, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]
