"""The dashboard's Workers section: each live worker (from its heartbeat in the broker's Redis),
its queues, the age of its last heartbeat and the job it is running now (from the database),
scoped to the signed-in key's tenant: another tenant's running job shows as `busy`, unnamed.

Against a real Redis: the data dir's private server, as `thermoml up` runs it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from fastapi.testclient import TestClient

from service import jobs as lifecycle
from service import workers_seen
from service.config import Settings
from service.db import keys as key_repo
from service.main import create_app
from tests.conftest import RecordingPublisher
from tests.integration.test_workers_seen import broker  # noqa: F401

COOLING = {"kind": "cooling", "params": {"duration": 1}}


@dataclass
class Setup:
    client: TestClient
    broker: redis.Redis
    keys: dict[str, str]  # tenant a, tenant b, an admin of tenant ops
    jobs: dict[str, str]  # a, b: a running job of each tenant

    def page(self, path: str, who: str) -> str:
        answer = self.client.get(path, headers={"Authorization": f"Bearer {self.keys[who]}"})
        assert answer.status_code == 200, answer.text
        return answer.text


def row(html: str, worker: str) -> str:
    """The table row of `worker` (empty when the page does not list it)."""
    found = re.search(rf'<tr data-worker="{re.escape(worker)}">(.*?)</tr>', html, re.S)
    return found.group(1) if found else ""


@pytest.fixture
def setup(settings: Settings, broker: redis.Redis) -> Iterator[Setup]:  # noqa: F811
    app = create_app(settings.model_copy(update={"auth": "required"}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)  # jobs stay queued until claimed
    keys = {}
    with app.state.sessions.begin() as session:
        for tenant, scopes in (("a", "read,train"), ("b", "read,train"), ("ops", "admin")):
            _, keys[tenant] = key_repo.create(
                session, scopes=scopes.split(","), name=tenant, tenant=tenant
            )
    with TestClient(app) as client:
        jobs = {}
        for tenant in ("a", "b"):
            answer = client.post(
                "/v1/jobs", json=COOLING, headers={"Authorization": f"Bearer {keys[tenant]}"}
            )
            assert answer.status_code == 202, answer.text
            jobs[tenant] = answer.json()["id"]
        yield Setup(client, broker, keys, jobs)


def run_on(setup: Setup, tenant: str, worker: str) -> None:
    """The worker `worker` claims tenant's job, as a job process does."""
    with setup.client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        attempt = lifecycle.claim(
            session, job_id=setup.jobs[tenant], worker=worker, lease_s=60, max_attempts=3
        )
    assert attempt == 1


def test_each_tenant_sees_its_running_job_and_only_busy_for_anothers(setup: Setup) -> None:
    workers_seen.beat(setup.broker, name="wa@host", queues=["cpu"], jobs=[], ttl=30)
    workers_seen.beat(setup.broker, name="wb@host", queues=["cpu", "gpu"], jobs=[], ttl=30)
    workers_seen.beat(setup.broker, name="idle@host", queues=["gpu"], jobs=[], ttl=30)
    run_on(setup, "a", "wa@host")
    run_on(setup, "b", "wb@host")
    job_a, job_b = setup.jobs["a"], setup.jobs["b"]

    for path in ("/", "/workers"):
        page = setup.page(path, "a")
        assert 'id="workers"' in page
        mine, theirs = row(page, "wa@host"), row(page, "wb@host")
        assert f'<a class="current-job" href="/jobs/{job_a}">{job_a}</a>' in mine
        assert '<span class="kind">cooling</span>' in mine
        assert "cpu" in mine and re.search(r"\d+\.\d s ago", mine)
        assert "busy" in theirs and "cpu, gpu" in theirs
        assert "current-job" not in theirs and "cooling" not in theirs
        assert job_b not in page, "another tenant's job id must not appear"
        assert "idle" in row(page, "idle@host")

    page_b = setup.page("/workers", "b")
    assert job_a not in page_b
    assert f'href="/jobs/{job_b}"' in row(page_b, "wb@host")
    assert "busy" in row(page_b, "wa@host")

    admin = setup.page("/workers", "ops")
    assert f'href="/jobs/{job_a}"' in row(admin, "wa@host")
    assert f'href="/jobs/{job_b}"' in row(admin, "wb@host")
    assert "busy" not in admin


def test_the_heartbeats_decide_who_is_listed(setup: Setup) -> None:
    workers_seen.beat(setup.broker, name="gone@host", queues=["cpu"], jobs=[], ttl=30)
    workers_seen.beat(setup.broker, name="<b>bold</b>@host", queues=["cpu"], jobs=[], ttl=30)
    stale = {"queues": ["cpu"], "pid": 1, "beat_at": time.time() - 600, "jobs": []}
    setup.broker.set(workers_seen.key_of("silent@host"), json.dumps(stale), ex=60)
    setup.broker.set(workers_seen.key_of("broken@host"), b"not json", ex=60)
    aged = {"queues": ["gpu"], "pid": 2, "beat_at": time.time() - 4.0, "jobs": []}
    setup.broker.set(workers_seen.key_of("slow@host"), json.dumps(aged), ex=60)
    run_on(setup, "a", "gone@host")

    page = setup.page("/workers", "a")
    assert row(page, "gone@host") and row(page, "slow@host")
    assert re.search(r"[4-9]\.\d s ago", row(page, "slow@host")), row(page, "slow@host")
    assert not row(page, "silent@host"), "a worker silent for three intervals is gone"
    assert "broken@host" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;@host" in page and "<b>bold</b>" not in page

    workers_seen.forget(setup.broker, "gone@host")
    page = setup.page("/workers", "a")
    assert not row(page, "gone@host")
    assert setup.jobs["a"] not in page, "a job whose worker is gone is no worker's current job"


def test_no_live_worker_and_an_unreadable_broker_are_said(setup: Setup) -> None:
    assert "No live worker" in setup.page("/workers", "a")
    setup.broker.shutdown(nosave=True)
    for path in ("/", "/workers"):
        page = setup.page(path, "a")
        assert "Workers unknown" in page


def test_the_workers_page_needs_a_key(setup: Setup) -> None:
    answer = setup.client.get("/workers", headers={"Accept": "application/json"})
    assert answer.status_code == 401
