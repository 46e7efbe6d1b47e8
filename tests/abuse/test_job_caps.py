"""Per-key job caps hold under concurrency: 30 submits at once with a cap of 5 admit exactly 5,
on SQLite and on PostgreSQL (a check-then-insert admitted 24)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from migrations import upgrade
from service.config import Settings
from service.main import create_app
from tests.conftest import RecordingPublisher
from tests.pg import scratch_database

CAP = 5
CLIENTS = 30
COOLING = {"kind": "cooling", "params": {"method": "rk4"}}


@pytest.fixture(params=["sqlite", "postgresql"])
def capped(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> Iterator[Settings]:
    update = {"max_queued_jobs_per_key": CAP}
    if request.param == "sqlite":
        yield settings.model_copy(update=update)
        return
    with scratch_database() as url:
        upgrade(url)
        yield settings.model_copy(update={**update, "database_url": url})


def test_concurrent_submits_never_pass_the_cap(capped: Settings) -> None:
    app = create_app(capped, reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)  # jobs stay queued
    with TestClient(app) as client, ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/jobs", json=COOLING), range(CLIENTS)))
        codes = sorted(a.status_code for a in answers)
        listed = client.get("/v1/jobs", params={"status": "queued"}).json()["items"]
    assert codes == [202] * CAP + [429] * (CLIENTS - CAP)
    assert len(listed) == CAP
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited"


def test_concurrent_retries_of_one_key_at_the_cap_all_get_the_job(settings: Settings) -> None:
    """Retries of one request (same Idempotency-Key) are replays, never 429, even at the cap."""
    app = create_app(settings.model_copy(update={"max_queued_jobs_per_key": 1}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)
    headers = {"Idempotency-Key": "retry-me"}
    with TestClient(app) as client, ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda _: client.post("/v1/jobs", json=COOLING, headers=headers), range(10))
        )
    assert [a.status_code for a in answers] == [202] * 10
    assert len({a.json()["id"] for a in answers}) == 1
