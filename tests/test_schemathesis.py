"""Property-based tests of every operation from the OpenAPI schema (Schemathesis).

The in-process app over a SQLite database in a temporary folder; published jobs are recorded,
not run. Three times: with auth disabled; with `THERMOML_AUTH=required` and an admin key; and
with `THERMOML_AUTH=required` and a non-admin key of another tenant, so that the tenant-scoped
paths (lists, reads and writes that must not reach the admin's tenant) are fuzzed too. Every
generated request must be answered without a server error (5xx) and by a response that
conforms to the schema. Bounded: a few examples per operation and phase.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error, response_schema_conformance  # noqa: E402

from service.config import Settings  # noqa: E402
from tests.conftest import RecordingPublisher  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MAX_EXAMPLES = 20  # fuzzed cases per operation; the examples and coverage phases add more
CHECKS = [not_a_server_error, response_schema_conformance]
CASES: Counter[str] = Counter()
STATUSES: dict[str, Counter[int]] = {"open": Counter(), "auth": Counter(), "tenant": Counter()}


def make_app(folder: Path, auth: str) -> Any:
    """The app over a SQLite database in `folder` (made and filled by `databases` below)."""
    from service.main import create_app

    current = Settings(
        data_dir=folder,
        auth=auth,  # type: ignore[arg-type]
        # Explicit, so that THERMOML_* variables in the environment cannot point elsewhere.
        database_url=f"sqlite:///{folder / 'thermoml.db'}",
        broker_url="filesystem://",
        artifact_uri=(folder / "artifacts").as_uri(),
        bootstrap_admin_key=None,
    )
    app = create_app(current, reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)
    return app


# The schemas are loaded when the module is collected (Schemathesis's lazy `from_fixture` loader
# does not work with pytest 9.2): /openapi.json needs no database, so this only builds the apps.
ROOT = Path(tempfile.mkdtemp(prefix="thermoml-schemathesis-"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)
OPEN_APP = make_app(ROOT / "open", "disabled")
AUTH_APP = make_app(ROOT / "auth", "required")
open_api = schemathesis.openapi.from_asgi("/openapi.json", OPEN_APP)
auth_api = schemathesis.openapi.from_asgi("/openapi.json", AUTH_APP)
KEYS: dict[str, str] = {}  # "admin" (tenant `default`) and "tenant" (tenant `acme`)


@pytest.fixture(scope="module", autouse=True)
def databases() -> Iterator[None]:
    """Migrate both databases, make the two keys, and add a few jobs for the fuzzer to meet."""
    from fastapi.testclient import TestClient

    from migrations import upgrade
    from service.db import keys as key_repo

    for app in (OPEN_APP, AUTH_APP):
        upgrade(app.state.settings.resolved_database_url)
    with AUTH_APP.state.sessions.begin() as session:
        _, KEYS["admin"] = key_repo.create(session, scopes=["admin"], name="schemathesis")
        _, KEYS["tenant"] = key_repo.create(
            session, scopes=["read", "train", "infer"], name="schemathesis-acme", tenant="acme"
        )
    seeds = ((OPEN_APP, {}), (AUTH_APP, headers("admin")), (AUTH_APP, headers("tenant")))
    for app, auth in seeds:
        with TestClient(app) as client:
            for i in range(3):
                spec = {"kind": "cooling", "name": f"seed-{i}", "params": {"method": "rk4"}}
                assert client.post("/v1/jobs", json=spec, headers=auth).status_code == 202
    yield
    for app in (OPEN_APP, AUTH_APP):
        app.state.engine.dispose()
    shutil.rmtree(ROOT, ignore_errors=True)


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    from bench.common import write_report

    total = sum(CASES.values())
    statuses = {mode: dict(sorted(c.items())) for mode, c in STATUSES.items()}
    print(f"[schemathesis] {total} cases: {dict(CASES)}; statuses: {statuses}")
    if total:
        write_report(
            "schemathesis",
            {"cases": dict(CASES), "total_cases": total, "statuses": statuses},
        )


HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@open_api.parametrize()
@HYPOTHESIS
def test_every_operation_with_auth_disabled(case: Any) -> None:
    response = case.call_and_validate(checks=CHECKS)
    CASES["auth_disabled"] += 1
    STATUSES["open"][response.status_code] += 1


@auth_api.parametrize()
@HYPOTHESIS
def test_every_operation_with_an_admin_key(case: Any) -> None:
    response = case.call_and_validate(headers=headers("admin"), checks=CHECKS)
    CASES["auth_required_admin_key"] += 1
    STATUSES["auth"][response.status_code] += 1


@auth_api.parametrize()
@HYPOTHESIS
def test_every_operation_with_a_tenant_key(case: Any) -> None:
    response = case.call_and_validate(headers=headers("tenant"), checks=CHECKS)
    CASES["auth_required_tenant_key"] += 1
    STATUSES["tenant"][response.status_code] += 1
