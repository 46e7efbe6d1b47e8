"""`POST /v1/models/{ref}/drift` over HTTP: every kind that serves `score` keeps a reference
sample and answers drift tests on JSON, `.npy` and Arrow rows; the request is refused as a
`score` request would be (shape, rows limit, non-finite numbers, a model that does not serve
`score`, another tenant's model), and a model without a reference sample is a 409."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ml.anomaly.drift import MAX_PERMUTATIONS, REFERENCE, REFERENCE_ROWS
from ml.core.datasets import load_builtin
from ml.core.registry import get_kind, list_kinds
from service.config import Settings
from service.db import keys as key_repo
from service.db import models as model_repo
from service.db.base import new_id, utcnow
from service.main import create_app
from tests.conftest import RecordingPublisher, submit
from tests.service.test_inference_api import ARROW, arrow, npy

QUICK = {"epochs": 1, "batch_size": 64, "seed": 0}
# A quick job of every kind that serves `score` (a new one fails here until it has one).
SPECS: dict[str, dict[str, Any]] = {
    "autoencoder": {"training": QUICK},
    "vae": {"training": QUICK},
    "pca": {"params": {"n_components": 3}},
    "detector": {"params": {"method": "ecod"}},
    "ensemble": {"params": {"members": [{"detector": "ecod"}, {"detector": "pca"}]}},
    "diffusion": {
        "params": {"timesteps": 10, "hidden": [8], "bound_timesteps": 2},
        "training": QUICK,
    },
}
SCORING = [kind for kind in list_kinds() if "score" in get_kind(kind).serves]


def train(client: TestClient, kind: str, name: str) -> dict[str, Any]:
    spec = {"kind": kind, "name": name, "dataset": "builtin:breast_cancer", **SPECS[kind]}
    job = submit(client, spec)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    return client.get(f"/v1/models/{done['model_id']}").json()  # type: ignore[no-any-return]


@pytest.fixture
def rows() -> np.ndarray:
    return load_builtin("breast_cancer").x[:120].astype(np.float32)


@pytest.mark.parametrize("kind", SCORING)
def test_every_kind_that_scores_keeps_a_reference_and_answers_drift(
    client: TestClient, kind: str, rows: np.ndarray
) -> None:
    model = train(client, kind, f"drift-{kind}")
    assert REFERENCE in model["files"]
    answer = client.post(f"/v1/models/drift-{kind}/drift", json={"inputs": rows.tolist()})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["rows"] == body["mmd_rows"] == len(rows)
    assert 1 < body["reference_rows"] <= REFERENCE_ROWS
    assert len(body["features"]) == rows.shape[1] == 30
    assert body["drift"] == (body["p_value"] <= body["alpha"] == 0.05)
    assert body["permutations"] == 100 and 0 < body["p_value"] <= 1
    # Shifted far from the training rows (in raw units: the model scales them): drift.
    far = client.post(f"/v1/models/drift-{kind}/drift", json={"inputs": (rows * 3).tolist()})
    assert far.json()["drift"] and far.json()["features_drifted"] > 0


def test_json_npy_and_arrow_rows_answer_alike(client: TestClient, rows: np.ndarray) -> None:
    import pyarrow as pa

    train(client, "pca", "drifting")
    url = "/v1/models/drifting/drift?permutations=50&seed=4&alpha=0.1"
    by_json = client.post(url, json={"inputs": rows.tolist()})
    by_npy = client.post(url, content=npy(rows), headers={"content-type": "application/x-npy"})
    table = pa.table({f"f{j}": rows[:, j] for j in range(rows.shape[1])})
    by_arrow = client.post(
        url, content=arrow(table), headers={"content-type": ARROW, "accept": ARROW}
    )
    for response in (by_json, by_npy, by_arrow):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"  # whatever Accept says
    assert by_json.json() == by_npy.json() == by_arrow.json()
    assert by_json.json()["permutations"] == 50 and by_json.json()["alpha"] == 0.1
    other_seed = client.post(url.replace("seed=4", "seed=5"), json={"inputs": rows.tolist()})
    assert other_seed.json()["statistic"] == by_json.json()["statistic"]


def test_bad_rows_and_options_are_422_as_for_score(
    client: TestClient, rows: np.ndarray, settings: Settings
) -> None:
    train(client, "detector", "strict-drift")
    url = "/v1/models/strict-drift/drift"
    for operation in ("score", "drift"):  # the same refusals, from the same checks
        narrow = client.post(f"/v1/models/strict-drift/{operation}", json={"inputs": [[1.0, 2.0]]})
        assert narrow.status_code == 422
        assert narrow.json()["error"]["details"]["expected_shape"] == [30]
    nan_rows = ", ".join(["[" + ", ".join(["NaN"] + ["1.0"] * 29) + "]"] * 3)
    json_nan = {"content-type": "application/json"}
    answer = client.post(url, content=f'{{"inputs": [{nan_rows}]}}', headers=json_nan)
    assert answer.status_code == 422 and "non-finite" in answer.json()["error"]["message"]
    with_inf = rows[:5].copy()
    with_inf[1, 0] = np.inf
    answer = client.post(url, content=npy(with_inf), headers={"content-type": "application/x-npy"})
    assert answer.status_code == 422
    assert answer.json()["error"]["message"] == "row 1 holds a non-finite number"
    # Finite, but beyond float32 once standardised (÷ the feature's sd, here < 1): 422 too.
    huge = np.full((3, 30), np.finfo(np.float32).max, np.float32)
    answer = client.post(url, content=npy(huge), headers={"content-type": "application/x-npy"})
    assert answer.status_code == 422
    assert answer.json()["error"]["message"] == "row 0 is too large for the model's scaling"
    one = client.post(url, json={"inputs": rows[:1].tolist()})
    assert one.status_code == 422 and "at least 2 rows" in one.json()["error"]["message"]
    queries = (
        f"permutations={MAX_PERMUTATIONS + 1}",
        "permutations=0",
        "permutations=1e9",
        "alpha=1",
        "alpha=nan",
        "alpha=inf",
        "seed=-1",
        f"seed={2**40}",
    )
    for query in queries:
        refused = client.post(f"{url}?{query}", json={"inputs": rows.tolist()})
        assert refused.status_code == 422, query
        assert refused.json()["error"]["code"] == "validation_error"
    client.app.state.settings = settings.model_copy(update={"max_inference_rows": 3})  # type: ignore[attr-defined]
    many = client.post(url, json={"inputs": rows[:4].tolist()})
    assert many.status_code == 422 and "limit of 3" in many.json()["error"]["message"]


def test_a_model_that_does_not_score_is_refused_as_score_is(
    client: TestClient, rows: np.ndarray
) -> None:
    spec = {"kind": "kmeans", "name": "clusters", "dataset": "builtin:breast_cancer"}
    job = submit(client, {**spec, "params": {"n_clusters": 2}})
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    score = client.post("/v1/models/clusters/score", json={"inputs": rows.tolist()})
    drift = client.post("/v1/models/clusters/drift", json={"inputs": rows.tolist()})
    assert drift.status_code == score.status_code == 409
    assert drift.json() == score.json()  # the refusal names `score`, which drift needs
    assert drift.json()["error"]["code"] == "unsupported_operation"


def add_model(app: Any, tenant: str, name: str, files: dict[str, Any]) -> None:
    """A models row that serves `score` (its files never fetched: the answers stop before)."""
    with app.state.sessions.begin() as session:
        model_repo.create(
            session,
            model_id=new_id(),
            name=name,
            tenant=tenant,
            kind="autoencoder",
            job_id=None,
            artifact_uri="file:///nowhere",
            sha256="0" * 64,
            capabilities=["encode", "reconstruct", "score"],
            files=files,
            input_shape=[30],
            created_at=utcnow(),
        )


@pytest.fixture
def tenants(settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    app = create_app(settings.model_copy(update={"auth": "required"}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)
    headers = {}
    with app.state.sessions.begin() as session:
        for tenant in ("a", "b"):
            _, secret = key_repo.create(
                session, scopes=["read", "infer"], name=f"key-{tenant}", tenant=tenant
            )
            headers[tenant] = {"Authorization": f"Bearer {secret}"}
    with TestClient(app) as client:
        yield client, headers


def test_another_tenants_model_is_404_and_one_without_reference_is_409(
    tenants: tuple[TestClient, dict[str, dict[str, str]]], rows: np.ndarray
) -> None:
    client, headers = tenants
    entry = {"key": "nowhere", "sha256": "0" * 64, "size": 1}
    add_model(client.app, "b", "theirs", {"encoder": entry, REFERENCE: entry})
    add_model(client.app, "a", "old", {"encoder": entry})  # trained before reference samples
    body = {"json": {"inputs": rows.tolist()}}
    for operation in ("score", "drift"):
        other = client.post(f"/v1/models/theirs/{operation}", headers=headers["a"], **body)
        assert other.status_code == 404, other.text
        assert other.json()["error"]["code"] == "not_found"
    old = client.post("/v1/models/old/drift", headers=headers["a"], **body)
    assert old.status_code == 409, old.text
    error = old.json()["error"]
    assert error["code"] == "invalid_state" and "train it again" in error["message"]
