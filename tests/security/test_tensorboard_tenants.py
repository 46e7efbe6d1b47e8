"""TensorBoard runs per tenant: a job's event files go under `tensorboard/<tenant>/<run>`, so a
logdir of one tenant holds that tenant's runs and nothing of another's; and no route of the API
hands one tenant another tenant's event files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.db import keys as key_repo
from service.errors import ServiceError
from service.main import create_app
from service.storage import ArtifactStore
from tests.conftest import RecordingPublisher
from tests.security.test_tenants import ALLOWED_REFUSALS, PARAM, Tenant, call, fillings
from workers.tensorboard import run_folder

COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}


@dataclass
class Runs:
    client: TestClient
    store: ArtifactStore
    a: Tenant
    b: Tenant


@pytest.fixture
def runs(settings: Settings) -> Iterator[Runs]:
    """Tenants a and b, each with a finished cooling job (run inline, so its event files exist)."""
    app = create_app(settings.model_copy(update={"auth": "required"}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=True)
    secrets = {}
    with app.state.sessions.begin() as session:
        for name in ("a", "b"):
            _, secrets[name] = key_repo.create(
                session, scopes=["read", "train", "infer"], name=f"key-{name}", tenant=name
            )
    with TestClient(app) as client:
        a, b = Tenant("a", secrets["a"]), Tenant("b", secrets["b"])
        for tenant in (a, b):
            job = client.post("/v1/jobs", json=COOLING, headers=tenant.headers)
            assert job.status_code == 202, job.text
            tenant.job = job.json()["id"]
            done = client.get(f"/v1/jobs/{tenant.job}", headers=tenant.headers).json()
            assert done["status"] == "succeeded", done["error"]
        yield Runs(client, ArtifactStore.from_settings(settings), a, b)


def test_each_tenants_runs_are_in_its_own_folder(runs: Runs) -> None:
    for tenant, other in ((runs.a, runs.b), (runs.b, runs.a)):
        keys = runs.store.list(f"tensorboard/{tenant.name}")
        assert len(keys) == 1
        run = f"cooling-{tenant.job[:8]}"  # the job has no name: its kind and short id
        assert keys[0].startswith(f"tensorboard/{tenant.name}/{run}/events.out.tfevents.")
        assert not [k for k in keys if other.job in k]
    # Nothing is left at the top level, where one logdir would show every tenant's runs as its own.
    assert {key.split("/")[1] for key in runs.store.list("tensorboard")} == {"a", "b"}


def test_a_tenants_logdir_shows_only_its_runs(runs: Runs) -> None:
    multiplexer = pytest.importorskip(
        "tensorboard.backend.event_processing.plugin_event_multiplexer",
        reason="tensorboard not installed",
    )
    root = Path(runs.store.root) / "tensorboard"
    for tenant in (runs.a, runs.b):
        logdir = multiplexer.EventMultiplexer().AddRunsFromDirectory(str(root / tenant.name))
        assert set(logdir.Runs()) == {f"cooling-{tenant.job[:8]}"}
    every = multiplexer.EventMultiplexer().AddRunsFromDirectory(str(root))
    assert set(every.Runs()) == {f"a/cooling-{runs.a.job[:8]}", f"b/cooling-{runs.b.job[:8]}"}


def test_no_route_hands_a_tenant_another_tenants_event_files(runs: Runs) -> None:
    """Every GET route, with tenant b's job id wherever a path takes an id: tenant a gets neither
    b's event files nor where they are."""
    client, a, b = runs.client, runs.a, runs.b
    b.dataset = b.model = b.job  # b has only a job; every id parameter tries it
    (theirs,) = runs.store.list(f"tensorboard/{b.name}")
    secrets = {theirs, theirs.rsplit("/", 1)[1], f"tensorboard/{b.name}", "tfevents"}
    schema = client.app.openapi()  # type: ignore[attr-defined]
    walked = 0
    for template, operations in schema["paths"].items():
        if "get" not in operations:
            continue
        for path in fillings(template, b):
            status, text = call(client, "get", path, a.headers)
            where = f"GET {path} -> {status}: {text[:300]}"
            assert not [s for s in secrets if s in text], where
            if PARAM.search(template):
                assert status in ALLOWED_REFUSALS, where
            walked += 1
    assert walked >= 10


@pytest.mark.parametrize("tenant", ["..", "../b", "a/../b", "/abs", "", "A"])
def test_a_run_folder_never_leaves_its_tenants_folder(tenant: str) -> None:
    with pytest.raises(ServiceError):
        run_folder(tenant, "cooling-0b7e2d64")
    assert run_folder("team-7.prod", "cooling-0b7e2d64") == "team-7.prod/cooling-0b7e2d64"
    for run in ("..", "../b", "a/b", "/abs", ""):
        with pytest.raises(ValueError):
            run_folder("team-7.prod", run)
