"""The `kmeans` kind in-process: agreement with scikit-learn, seeds, predict, bad data; and once
through the API (submit, model, predict)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.metrics import adjusted_rand_score

from ml.clustering.kmeans import KMeansSpec
from ml.core.datasets import Dataset, load_builtin
from ml.core.preprocessing import Scaler
from ml.core.reporting import JobFailed
from ml.core.serving import UnsupportedOperation
from tests.conftest import submit
from tests.ml.anomaly.test_autoencoder import serve, train


def scaled(data: Dataset, preprocessing: dict) -> np.ndarray:
    x = Scaler.from_dict(preprocessing).transform(data.x.astype(np.float32))
    return x.reshape(len(x), -1)


@pytest.mark.parametrize(("name", "k"), [("eight_gaussians", 8), ("digits", 10)])
def test_inertia_matches_scikit_learn_within_one_percent(tmp_path: Path, name: str, k: int) -> None:
    data = load_builtin(name)
    outcome, _ = train("kmeans", {"params": {"n_clusters": k}}, tmp_path, data)
    assert outcome.model is not None
    x = scaled(data, outcome.model.preprocessing)
    reference = SklearnKMeans(n_clusters=k, n_init=10, random_state=0).fit(x)
    inertia = outcome.result["inertia"]
    assert abs(inertia - reference.inertia_) <= 0.01 * reference.inertia_
    assert outcome.model.evaluation["inertia"] == inertia
    assert outcome.model.input_shape == list(data.x.shape[1:])
    # the reported inertia is the one of the saved centroids on the scaled rows
    with np.load(outcome.model.files["centroids"]) as saved:
        centroids = saved["centroids"].astype(np.float64)
    direct = ((x[:, None, :] - centroids[None]) ** 2).sum(axis=2).min(axis=1).sum()
    assert inertia == pytest.approx(direct, rel=1e-4)
    for key in ("ari", "nmi"):
        assert outcome.result[key] == outcome.model.evaluation[key]
    ours = serve("kmeans", outcome).run("predict", data.x)["clusters"]
    assert outcome.result["ari"] == pytest.approx(adjusted_rand_score(data.y, ours))
    assert outcome.result["ari"] > (0.95 if name == "eight_gaussians" else 0.5)


def test_inertia_history_is_per_iteration_with_steps_running_across_restarts(
    tmp_path: Path,
) -> None:
    data = load_builtin("wine")
    spec = {"params": {"n_clusters": 3, "n_init": 4, "seed": 1}}
    outcome, reporter = train("kmeans", spec, tmp_path, data)
    steps, inertia = reporter.series("inertia")
    _, restart = reporter.series("restart")
    assert steps == list(range(1, len(steps) + 1))
    assert sorted(set(restart)) == [0, 1, 2, 3] and restart == sorted(restart)
    for r in range(4):  # Lloyd never increases the inertia within a restart
        run = np.array([v for v, rr in zip(inertia, restart, strict=True) if rr == r])
        assert (np.diff(run) <= 1e-3 * run[0]).all()
    _, finals = reporter.series("restart_inertia")
    assert len(finals) == 4
    assert outcome.result["inertia"] == pytest.approx(min(finals))
    assert reporter.fractions[-1] == 1.0


def test_the_same_seed_gives_the_same_centroids(tmp_path: Path) -> None:
    data = load_builtin("wine")
    spec = {"params": {"n_clusters": 4, "n_init": 2, "seed": 7}}
    first, _ = train("kmeans", spec, tmp_path / "a", data)
    second, _ = train("kmeans", spec, tmp_path / "b", data)
    assert first.model is not None and second.model is not None
    with (
        np.load(first.model.files["centroids"]) as a,
        np.load(second.model.files["centroids"]) as b,
    ):
        assert np.array_equal(a["centroids"], b["centroids"])
    assert first.result == second.result


def test_predict_answers_clusters_and_squared_distances_in_the_scaled_space(
    tmp_path: Path,
) -> None:
    data = load_builtin("digits")
    outcome, _ = train("kmeans", {"params": {"n_clusters": 5, "n_init": 1}}, tmp_path, data)
    assert outcome.model is not None
    servable = serve("kmeans", outcome)
    rows = data.x[:9]
    answer = servable.run("predict", rows)
    assert set(answer) == {"clusters", "distances"}
    assert answer["clusters"].shape == (9,) and answer["distances"].shape == (9, 5)
    assert (answer["clusters"] == answer["distances"].argmin(axis=1)).all()
    with np.load(outcome.model.files["centroids"]) as saved:
        centroids = saved["centroids"]
    x = scaled(data, outcome.model.preprocessing)[:9]
    expected = ((x[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(answer["distances"], expected, rtol=1e-4, atol=1e-3)
    with pytest.raises(UnsupportedOperation, match="serves predict"):
        servable.run("encode", rows)


def test_more_clusters_than_rows_fails_with_invalid_data(tmp_path: Path) -> None:
    data = Dataset(x=np.random.default_rng(0).random((5, 3)), name="five")
    with pytest.raises(JobFailed) as info:
        train("kmeans", {"params": {"n_clusters": 6}}, tmp_path, data)
    assert info.value.code == "invalid_data"
    assert "n_clusters = 6" in info.value.message and "5 rows" in info.value.message


def test_fewer_distinct_rows_than_clusters_fails_with_invalid_data(tmp_path: Path) -> None:
    x = np.repeat(np.array([[0.0, 1.0], [2.0, 3.0], [-0.0, 1.0]]), 20, axis=0)
    with pytest.raises(JobFailed) as info:
        train("kmeans", {"params": {"n_clusters": 3}}, tmp_path, Dataset(x=x, name="two"))
    assert info.value.code == "invalid_data"
    assert "only 2 distinct rows" in info.value.message
    # exactly as many clusters as distinct rows is fine: every duplicate lands on its centroid
    outcome, _ = train("kmeans", {"params": {"n_clusters": 2}}, tmp_path, Dataset(x=x, name="two"))
    assert outcome.result["inertia"] == pytest.approx(0.0, abs=1e-6)


def test_fewer_than_one_cluster_is_refused_by_the_schema() -> None:
    with pytest.raises(ValidationError, match="n_clusters"):
        KMeansSpec.model_validate({"kind": "kmeans", "dataset": "x", "params": {"n_clusters": 0}})


def test_through_the_api(client: TestClient) -> None:
    refused = client.post("/v1/jobs", json={**KMeansSpec.example, "params": {"n_clusters": 0}})
    assert refused.status_code == 422
    too_many = {"kind": "kmeans", "dataset": "builtin:wine", "params": {"n_clusters": 500}}
    refused = client.post("/v1/jobs", json=too_many)  # the service knows wine's 178 rows
    assert refused.status_code == 422
    assert "n_clusters = 500 is more than the 178 rows" in refused.json()["error"]["message"]
    job = submit(client, {"kind": "kmeans", "dataset": "builtin:wine", "params": {"n_clusters": 3}})
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    model = client.get(f"/v1/models/{done['model_id']}").json()
    assert model["capabilities"] == ["predict"]
    assert set(model["evaluation"]) >= {"ari", "nmi", "inertia"}
    rows = load_builtin("wine").x[:4].tolist()
    answer = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": rows})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["clusters"]) == 4 and np.shape(body["distances"]) == (4, 3)
    wrong = client.post(f"/v1/models/{model['id']}/encode", json={"inputs": rows})
    assert wrong.status_code == 409
