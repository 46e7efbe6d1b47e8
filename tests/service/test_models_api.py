"""The model registry over HTTP: list and filter, refs (id, name, name@version), deletion."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.db import models as model_repo
from service.db.tenancy import EVERYONE
from service.errors import ServiceError
from service.storage import ArtifactStore
from tests.tinykind import make_job, read_job, tiny  # noqa: F401
from workers import runtime
from workers.execute import execute

pytestmark = pytest.mark.usefixtures("tiny")


def train(name: str, dataset: str = "builtin:moons") -> str:
    job_id = make_job(dataset, name=name)
    assert execute(job_id, worker="w") == "succeeded"
    model_id = read_job(job_id).model_id
    assert model_id is not None
    return model_id


@pytest.fixture
def models(client: TestClient) -> dict[str, str]:
    return {
        "moons@1": train("moons"),
        "moons@2": train("moons"),
        "rings@1": train("rings", "builtin:eight_gaussians"),
    }


def test_list_newest_first_with_filters(client: TestClient, models: dict[str, str]) -> None:
    items = client.get("/v1/models").json()["items"]
    assert [m["id"] for m in items] == [models["rings@1"], models["moons@2"], models["moons@1"]]
    named = client.get("/v1/models", params={"name": "moons"}).json()["items"]
    assert [(m["name"], m["version"]) for m in named] == [("moons", 2), ("moons", 1)]
    assert client.get("/v1/models", params={"kind": "tiny"}).json()["items"] == items
    assert client.get("/v1/models", params={"kind": "vae"}).json()["items"] == []


def test_cursor_pagination(client: TestClient, models: dict[str, str]) -> None:
    seen, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/models", params=params).json()
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [models["rings@1"], models["moons@2"], models["moons@1"]]


def test_a_model_resource(client: TestClient, models: dict[str, str]) -> None:
    model = client.get(f"/v1/models/{models['moons@1']}").json()
    assert model["kind"] == "tiny" and model["capabilities"] == ["encode"]
    assert model["input_shape"] == [2] and model["preprocessing"]["scale"] == "minmax"
    assert model["calibration"] == {"threshold": 0.5} and model["pictures"] == ["samples"]
    assert set(model["files"]) == {"model", "meta"} and len(model["sha256"]) == 64
    assert model["artifact_uri"].endswith(f"/models/{model['id']}")
    job = client.get(f"/v1/jobs/{model['job_id']}").json()
    assert job["model_id"] == model["id"]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("{moons@1}", "moons@1"), ("moons", "moons@2"), ("moons@1", "moons@1"), ("rings", "rings@1")],
)
def test_refs(client: TestClient, models: dict[str, str], ref: str, expected: str) -> None:
    ref = ref.format(**models)
    assert client.get(f"/v1/models/{ref}").json()["id"] == models[expected]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nonesuch", "no model 'nonesuch'; refer to a model by its id"),
        ("moons@7", "model 'moons' has no version 7; its versions are 1, 2"),
        ("0b7e2d64-8a55-4a49-9c8f-3f2d8c1e9a10", "no model"),
    ],
)
def test_unknown_refs_are_404(
    client: TestClient, models: dict[str, str], ref: str, message: str
) -> None:
    response = client.get(f"/v1/models/{ref}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert message in response.json()["error"]["message"]
    assert client.delete(f"/v1/models/{ref}").status_code == 404


def test_resolve_is_usable_directly(settings: Settings, models: dict[str, str]) -> None:
    with runtime.sessions()() as session:
        assert model_repo.resolve(session, "moons", scope=EVERYONE).version == 2
        assert model_repo.resolve(session, models["moons@1"].upper(), scope=EVERYONE).version == 1
        with pytest.raises(ServiceError) as raised:
            model_repo.resolve(session, "moons@3", scope=EVERYONE)
        assert raised.value.code == "not_found"


def test_a_name_with_an_at_sign(client: TestClient, settings: Settings) -> None:
    model_id = train("exp@3")
    assert client.get("/v1/models/exp@3").json()["id"] == model_id
    assert client.get("/v1/models/exp@3@1").json()["id"] == model_id


def test_delete_removes_the_row_and_every_file(
    client: TestClient, settings: Settings, models: dict[str, str]
) -> None:
    store = ArtifactStore.from_settings(settings)
    doomed = models["moons@2"]
    assert any(k.startswith(f"models/{doomed}/") for k in store.list())
    assert client.delete("/v1/models/moons").status_code == 204  # the latest: version 2
    assert client.get(f"/v1/models/{doomed}").status_code == 404
    assert client.get("/v1/models/moons").json()["version"] == 1
    survivors = {models["moons@1"], models["rings@1"]}
    assert {k.split("/")[1] for k in store.list()} == survivors  # nothing orphaned
    for ref in ("moons@1", "rings"):
        assert client.delete(f"/v1/models/{ref}").status_code == 204
    assert store.list() == [] and client.get("/v1/models").json()["items"] == []
