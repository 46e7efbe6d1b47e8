"""A job through the API, run by a real `celery worker` over Redis, its history in PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from migrations import upgrade
from service.config import Settings
from service.main import create_app
from tests.integration.helpers import job_done, start, stop, wait_for
from tests.pg import scratch_database

pytestmark = pytest.mark.integration
BROKER = "redis://127.0.0.1:6379/7"  # a database of its own, flushed by the test


@pytest.fixture
def production(tmp_path: Path) -> Iterator[tuple[Settings, TestClient]]:
    redis.Redis.from_url(BROKER).flushdb()
    with scratch_database() as url:
        upgrade(url)
        env = {
            "THERMOML_DATABASE_URL": url,
            "THERMOML_BROKER_URL": BROKER,
            "THERMOML_DATA_DIR": str(tmp_path / "worker"),
        }
        worker = start(["worker", "--queues", "cpu,gpu"], env, tmp_path / "worker.log")
        settings = Settings(database_url=url, broker_url=BROKER, data_dir=tmp_path / "api")
        try:
            with TestClient(create_app(settings)) as client:
                yield settings, client
        finally:
            stop(worker)
            print((tmp_path / "worker.log").read_text()[-3000:])
            redis.Redis.from_url(BROKER).flushdb()


def test_job_runs_on_a_real_worker_and_lands_in_postgres(
    production: tuple[Settings, TestClient],
) -> None:
    settings, client = production
    assert client.get("/readyz").status_code == 200
    ids = []
    for gpu in (False, True):
        spec = {"kind": "cooling", "params": {"method": "rk4"}, "resources": {"gpu": gpu}}
        response = client.post("/v1/jobs", json=spec)
        assert response.status_code == 202
        ids.append(response.json()["id"])
    for job_id in ids:
        job = wait_for(lambda j=job_id: job_done(client, j), 90, f"job {job_id}")  # type: ignore[misc]
        assert job["status"] == "succeeded", job
        assert job["worker"].startswith("thermoml-cpu-gpu")
    engine = create_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM metric_points WHERE job_id = :j AND name = 'temperature'"),
            {"j": ids[0]},
        ).scalar_one()
        queues = dict(conn.execute(text("SELECT id, queue FROM jobs")).all())
    engine.dispose()
    assert count == 101
    assert [queues[i] for i in ids] == ["cpu", "gpu"]
    metrics = client.get(f"/v1/jobs/{ids[0]}/metrics", params={"names": "temperature"}).json()
    assert metrics["series"]["temperature"]["values"][0] == 100.0


def test_readyz_reports_a_dead_broker(tmp_path: Path) -> None:
    settings = Settings(broker_url="redis://127.0.0.1:1/0", data_dir=tmp_path, publish_timeout=0.5)
    upgrade(settings.resolved_database_url)
    with TestClient(create_app(settings, reconcile=False)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["details"]["checks"]["broker"].startswith("unavailable")
    assert isinstance(response.json()["error"]["message"], str)
