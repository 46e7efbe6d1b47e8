"""Tenants with THERMOML_AUTH=required: a key reaches only its tenant's jobs, data sets and
models, and another tenant's object answers exactly as a missing one would (404). Every route of
the OpenAPI schema is walked programmatically with tenant A's key and tenant B's ids and names:
no answer carries B's data. Admin keys see every tenant, with a `tenant` filter on the lists."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.db import keys as key_repo
from service.db import models as model_repo
from service.db.base import new_id, utcnow
from service.main import create_app
from tests.conftest import RecordingPublisher

COOLING = {"kind": "cooling", "params": {"duration": 1}}
CSV_B = b"a,b\n1,2\n3,4\n5,6\n7,8\n"
CSV_A = b"a,b\n9,8\n7,6\n5,4\n"
ALLOWED_REFUSALS = {401, 403, 404, 405, 409, 422}
# Kinds tell the two tenants' `cancer-ae` apart in a 409 that names the model's kind.
KIND = {"a": "autoencoder", "b": "vae"}


@dataclass
class Tenant:
    name: str
    key: str
    job: str = ""
    dataset: str = ""
    model: str = ""
    markers: set[str] = field(default_factory=set)  # what in an answer would be this tenant's

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class World:
    client: TestClient
    a: Tenant
    b: Tenant
    admin: Tenant


def make_model(app: Any, tenant: str, name: str) -> str:
    with app.state.sessions.begin() as session:
        model = model_repo.create(
            session,
            model_id=new_id(),
            name=name,
            tenant=tenant,
            kind=KIND[tenant],
            job_id=None,
            artifact_uri="file:///nowhere",
            sha256="0" * 64,
            capabilities=[],  # serves nothing: an operation stops at a 409 naming the kind
            pictures=["samples"],
            created_at=utcnow(),
        )
        return model.id


def populate(client: TestClient, tenant: Tenant, csv: bytes) -> None:
    job = client.post(
        "/v1/jobs", json={**COOLING, "name": f"job-of-{tenant.name}"}, headers=tenant.headers
    )
    assert job.status_code == 202, job.text
    tenant.job = job.json()["id"]
    upload = client.post(
        "/v1/datasets",
        files={"file": (f"data-of-{tenant.name}.csv", csv, "text/csv")},
        headers=tenant.headers,
    )
    assert upload.status_code == 201, upload.text
    tenant.dataset = upload.json()["id"]
    tenant.model = make_model(client.app, tenant.name, "cancer-ae")
    make_model(client.app, tenant.name, f"only-{tenant.name}")
    tenant.markers |= {
        tenant.job,
        tenant.dataset,
        tenant.model,
        f"job-of-{tenant.name}",
        f"data-of-{tenant.name}",
        f"only-{tenant.name}",
    }


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    app = create_app(settings.model_copy(update={"auth": "required"}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)  # jobs stay queued
    secrets = {}
    with app.state.sessions.begin() as session:
        for name, scopes in (
            ("a", "read,train,infer"),
            ("b", "read,train,infer"),
            ("ops", "admin"),
        ):
            _, secrets[name] = key_repo.create(
                session, scopes=scopes.split(","), name=f"key-{name}", tenant=name
            )
    with TestClient(app) as client:
        a, b = Tenant("a", secrets["a"]), Tenant("b", secrets["b"])
        populate(client, b, CSV_B)
        populate(client, a, CSV_A)
        yield World(client, a, b, Tenant("ops", secrets["ops"]))


# --- walking the schema -------------------------------------------------------------------------

PARAM = re.compile(r"\{([^}]+)\}")


def path_values(name: str, b: Tenant) -> list[str]:
    """B's values for a path parameter: ids, and names that mean B's objects."""
    if name == "job_id":
        return [b.job]
    if name == "dataset_id":
        return [b.dataset]
    if name == "ref":
        return [b.model, "only-b", "only-b@1"]
    if name == "picture":
        return ["samples"]
    return [b.job, b.dataset, b.model]  # any other id: try each of B's


def fillings(path: str, b: Tenant) -> Iterator[str]:
    names = PARAM.findall(path)
    if not names:
        yield path
        return
    # Vary one parameter over B's values at a time; the others take their first value.
    firsts = {n: path_values(n, b)[0] for n in names}
    seen = set()
    for varied in names:
        for value in path_values(varied, b):
            filled = path
            for n in names:
                filled = filled.replace(f"{{{n}}}", value if n == varied else firsts[n])
            if filled not in seen:
                seen.add(filled)
                yield filled


def request_for(method: str, path: str, b: Tenant) -> dict[str, Any]:
    """A plausible body for the operation, pointing at B's objects where it names one."""
    if method == "post" and path == "/v1/jobs":
        return {"json": {**COOLING, "dataset": b.dataset}}
    if method == "post" and path == "/v1/datasets":
        return {"files": {"file": ("again.csv", CSV_B, "text/csv")}}
    if method == "post" and path.endswith("/generate"):
        return {"json": {"n": 1}}
    if method == "post" and "/v1/models/" in path:
        return {"json": {"inputs": [[1.0, 2.0]]}}
    if method in ("post", "put", "patch"):
        return {"json": {}}
    return {}


def call(
    client: TestClient, method: str, path: str, headers: dict[str, str], **kw: Any
) -> tuple[int, str]:
    """The status and text of the answer; of a 200 event stream, which never ends while the
    job is queued, only its status."""
    with client.stream(method.upper(), path, headers=headers, **kw) as response:
        if path.endswith("/events") and response.status_code == 200:
            return 200, ""
        body = response.read()
        png = response.headers.get("content-type", "").startswith("image/")
        return response.status_code, "" if png else body.decode()


def carries(text: str, tenant: Tenant) -> set[str]:
    return {m for m in tenant.markers if m in text}


def test_every_route_answers_tenant_a_without_tenant_b_data(world: World) -> None:
    client, a, b = world.client, world.a, world.b
    schema = client.app.openapi()  # type: ignore[attr-defined]
    walked = 0
    for template, operations in schema["paths"].items():
        for method in operations:
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            for path in fillings(template, b):
                kw = request_for(method, template, b)
                status, text = call(client, method, path, a.headers, **kw)
                where = f"{method.upper()} {path} -> {status}: {text[:300]}"
                echoed = {m for m in b.markers if m in path or m in repr(kw)}  # what A sent
                assert not carries(text, b) - echoed, where
                if PARAM.search(template) or status >= 400:  # a path naming B's object
                    assert status in ALLOWED_REFUSALS, where
                walked += 1
    assert walked >= 20  # the walk did reach the routes


def test_another_tenants_object_is_as_missing_as_a_missing_one(world: World) -> None:
    client, a, b = world.client, world.a, world.b
    for template in ("/v1/jobs/{}", "/v1/datasets/{}", "/v1/models/{}", "/v1/jobs/{}/metrics"):
        theirs = client.get(template.format(b.job if "jobs" in template else
                                            b.dataset if "datasets" in template else b.model),
                            headers=a.headers)  # fmt: skip
        missing_id = new_id()
        missing = client.get(template.format(missing_id), headers=a.headers)
        assert theirs.status_code == missing.status_code == 404
        assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
        theirs_text = theirs.json()["error"]["message"]
        assert theirs_text.replace(b.job, "X").replace(b.dataset, "X").replace(b.model, "X") == (
            missing.json()["error"]["message"].replace(missing_id, "X")
        )


def test_writes_on_another_tenants_objects_change_nothing(world: World) -> None:
    client, a, b = world.client, world.a, world.b
    assert client.post(f"/v1/jobs/{b.job}/cancel", headers=a.headers).status_code == 404
    assert client.delete(f"/v1/datasets/{b.dataset}", headers=a.headers).status_code == 404
    assert client.get(f"/v1/jobs/{b.job}", headers=b.headers).json()["status"] == "queued"
    assert client.get(f"/v1/datasets/{b.dataset}", headers=b.headers).status_code == 200
    # A job may not read another tenant's upload; built-ins are shared.
    theirs = client.post("/v1/jobs", json={**COOLING, "dataset": b.dataset}, headers=a.headers)
    assert theirs.status_code == 422
    assert "body.dataset" in theirs.text
    # The same content uploaded by A is A's own data set, not B's.
    again = client.post(
        "/v1/datasets", files={"file": ("x.csv", CSV_B, "text/csv")}, headers=a.headers
    )
    assert again.status_code == 201 and again.json()["id"] != b.dataset


def test_names_resolve_within_the_callers_tenant(world: World) -> None:
    client, a, b = world.client, world.a, world.b
    for tenant in (a, b, a):  # the reference cache must not hand A's answer to B or back
        model = client.get("/v1/models/cancer-ae", headers=tenant.headers)
        assert model.status_code == 200 and model.json()["id"] == tenant.model
        at = client.get("/v1/models/cancer-ae@1", headers=tenant.headers)
        assert at.json()["id"] == tenant.model
        score = client.post(
            "/v1/models/cancer-ae/score", json={"inputs": [[1.0]]}, headers=tenant.headers
        )
        assert score.status_code == 409 and f"({KIND[tenant.name]})" in score.text


def test_lists_show_only_the_callers_tenant(world: World) -> None:
    client, a, b = world.client, world.a, world.b
    for path in ("/v1/jobs", "/v1/models", "/v1/datasets"):
        for query in ("", "?tenant=b", "?tenant=a"):
            page = client.get(path + query, headers=a.headers)
            assert page.status_code == 200
            assert not carries(page.text, b), (path, query)
            if query != "?tenant=b":
                assert carries(page.text, a), (path, query)
    datasets = client.get("/v1/datasets", headers=a.headers).json()["items"]
    assert any(d["id"].startswith("builtin:") for d in datasets)  # built-ins are shared


def test_dashboard_shows_only_the_callers_tenant(world: World) -> None:
    client, a, b = world.client, world.a, world.b
    for page in ("/", "/models"):
        html = client.get(page, headers=a.headers)
        assert html.status_code == 200
        assert carries(html.text, a) and not carries(html.text, b), page
    assert client.get(f"/jobs/{b.job}", headers=a.headers).status_code == 404
    assert client.get(f"/models/{b.model}", headers=a.headers).status_code == 404


def test_admin_sees_every_tenant_and_filters_by_one(world: World) -> None:
    client, a, b, admin = world.client, world.a, world.b, world.admin
    for path in ("/v1/jobs", "/v1/models", "/v1/datasets"):
        both = client.get(path, headers=admin.headers).text
        assert carries(both, a) and carries(both, b), path
        only_b = client.get(f"{path}?tenant=b", headers=admin.headers).text
        assert carries(only_b, b) and not carries(only_b, a), path
        assert client.get(f"{path}?tenant=Not%20A%20Name", headers=admin.headers).status_code == 422
    assert client.get(f"/v1/jobs/{b.job}", headers=admin.headers).status_code == 200
    assert client.get(f"/v1/models/{b.model}", headers=admin.headers).status_code == 200
    assert client.get(f"/v1/datasets/{b.dataset}", headers=admin.headers).status_code == 200


def test_a_tenant_name_is_checked() -> None:
    from service.db import tenancy
    from service.errors import ServiceError

    for bad in ("", "Upper", "-lead", "a b", "x" * 65, "a/b"):
        with pytest.raises(ServiceError):
            tenancy.check_name(bad)
    assert tenancy.check_name("team-7.prod_1") == "team-7.prod_1"


def test_every_object_says_whose_it_is(world: World) -> None:
    """`tenant` on jobs, models and uploads: an admin's listing across tenants tells them apart."""
    client, a, b, admin = world.client, world.a, world.b, world.admin
    owner = {id_: t.name for t in (a, b) for id_ in (t.job, t.dataset, t.model)}
    for path in ("/v1/jobs", "/v1/models", "/v1/datasets"):
        items = client.get(path, headers=admin.headers).json()["items"]
        shown = {i["id"]: i["tenant"] for i in items}
        known = owner.keys() & shown.keys()
        assert known and {i: shown[i] for i in known} == {i: owner[i] for i in known}
        assert {t for i, t in shown.items() if not i.startswith("builtin:")} == {"a", "b"}
        assert {t for i, t in shown.items() if i.startswith("builtin:")} <= {None}  # shared
        mine = client.get(path, headers=a.headers).json()["items"]
        assert {i["tenant"] for i in mine} <= {"a", None}
    for tenant in (a, b):
        for path in (f"/v1/jobs/{tenant.job}", f"/v1/datasets/{tenant.dataset}"):
            assert client.get(path, headers=admin.headers).json()["tenant"] == tenant.name
        model = client.get(f"/v1/models/{tenant.model}", headers=tenant.headers).json()
        assert model["tenant"] == tenant.name


def test_a_job_cannot_read_another_tenants_model(world: World) -> None:
    """An ensemble over registered models resolves them for the submitting key: B's model, by
    id or by name, is as unknown to A as a model that does not exist."""
    a, b = world.a, world.b
    for ref in (b.model, "only-b", "only-b@1"):
        spec = {
            "kind": "ensemble",
            "dataset": "builtin:breast_cancer",
            "params": {"models": [ref], "members": [{"detector": "ecod"}]},
        }
        answer = world.client.post("/v1/jobs", json=spec, headers=a.headers)
        assert answer.status_code == 422, answer.text
        detail = answer.json()["error"]["details"][0]
        assert (detail["field"], detail["type"]) == ("body.params.models.0", "unknown_model")
        assert not carries(answer.text.replace(ref, ""), b), answer.text  # only what A sent
