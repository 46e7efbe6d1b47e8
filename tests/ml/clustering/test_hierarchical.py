"""The `hierarchical` kind: labels identical to scikit-learn's AgglomerativeClustering (up to
relabelling) for every linkage, cutting by count or by height, predict by each linkage's rule,
the merge heights and the dendrogram, the row limit, and once through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score

from ml.clustering import hierarchical
from ml.clustering.hierarchical import HierarchicalSpec
from ml.core.datasets import Dataset, load_builtin
from ml.core.preprocessing import Scaler
from ml.core.reporting import JobFailed
from tests.conftest import submit
from tests.ml.anomaly.test_autoencoder import serve, train

LINKAGES = ["ward", "average", "complete", "single"]


def fit(tmp: Path, data: Dataset, **params: Any) -> tuple[Any, Any]:
    return train("hierarchical", {"params": params}, tmp, data)


def labels_of(outcome: Any) -> np.ndarray:
    with np.load(outcome.model.files["hierarchical"]) as saved:
        return saved["labels"]


def scaled(data: Dataset, outcome: Any) -> np.ndarray:
    x = Scaler.from_dict(outcome.model.preprocessing).transform(data.x.astype(np.float64))
    return x.reshape(len(x), -1)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_builtin("digits")


@pytest.mark.parametrize("linkage", LINKAGES)
def test_labels_match_scikit_learn_by_count_and_by_height(
    tmp_path: Path, digits: Dataset, linkage: str
) -> None:
    outcome, reporter = fit(tmp_path / "k", digits, n_clusters=10, linkage=linkage)
    x = scaled(digits, outcome)
    reference = AgglomerativeClustering(10, linkage=linkage, compute_distances=True).fit(x)
    ours = labels_of(outcome)
    assert adjusted_rand_score(reference.labels_, ours) == 1.0
    # numbered in order of each cluster's first row
    firsts = [int(np.flatnonzero(ours == c)[0]) for c in range(10)]
    assert firsts == sorted(firsts)
    evaluation = outcome.model.evaluation
    assert evaluation["n_clusters"] == 10 and evaluation["linkage"] == linkage
    assert evaluation["ari"] == pytest.approx(adjusted_rand_score(digits.y, ours))
    assert -1 <= evaluation["cophenetic_correlation"] <= 1
    # the merge heights are scikit-learn's distances; the cut lies between two of them
    steps, heights = reporter.series("merge_height")
    assert steps == list(range(797, 1797)) and np.all(np.diff(heights) >= 0)
    np.testing.assert_allclose(heights, np.sort(reference.distances_)[-1000:], rtol=1e-9)
    cut = evaluation["cut_height"]
    assert heights[-10] <= cut <= heights[-9]
    _, counts = reporter.series("n_clusters")
    assert counts[-1] == 1 and counts[-10] == 10
    # cutting at that height gives the same clusters, as scikit-learn's distance_threshold does
    by_height, _ = fit(tmp_path / "h", digits, distance_threshold=cut, linkage=linkage)
    assert by_height.result["n_clusters"] == 10
    assert adjusted_rand_score(ours, labels_of(by_height)) == 1.0
    same = AgglomerativeClustering(None, distance_threshold=cut, linkage=linkage).fit(x)
    assert same.n_clusters_ == 10


def blobs() -> Dataset:
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = np.concatenate([c + rng.standard_normal((30, 2)) * [1.0, 0.3] for c in centres])
    return Dataset(x=x, y=np.repeat(np.arange(3), 30), name="blobs", label_type="class")


@pytest.mark.parametrize("linkage", LINKAGES)
def test_predict_assigns_new_rows_by_the_linkage_rule(tmp_path: Path, linkage: str) -> None:
    data = blobs()
    outcome, _ = fit(tmp_path, data, n_clusters=3, linkage=linkage)
    x, labels = scaled(data, outcome), labels_of(outcome)
    queries = np.random.default_rng(4).uniform(-3, 9, size=(25, 2))
    q = Scaler.from_dict(outcome.model.preprocessing).transform(queries)
    d = np.linalg.norm(q[:, None, :] - x[None, :, :], axis=2)  # [query, training row]
    members = [labels == c for c in range(3)]
    expected = {
        "single": np.stack([d[:, m].min(axis=1) for m in members], axis=1),
        "complete": np.stack([d[:, m].max(axis=1) for m in members], axis=1),
        "average": np.stack([d[:, m].mean(axis=1) for m in members], axis=1),
        "ward": np.stack([np.linalg.norm(q - x[m].mean(axis=0), axis=1) for m in members], axis=1),
    }[linkage]
    answer = serve("hierarchical", outcome).run("predict", queries)
    assert set(answer) == {"clusters", "distances"}
    np.testing.assert_allclose(answer["distances"], expected, rtol=1e-9)
    assert (answer["clusters"] == expected.argmin(axis=1)).all()
    assert outcome.result["ari"] == 1.0  # the blobs are found
    # a training row of a compact blob lands in its own cluster
    own = serve("hierarchical", outcome).run("predict", data.x[:5])["clusters"]
    assert (own == labels[:5]).all()


def test_draws_the_dendrogram(tmp_path: Path) -> None:
    outcome, _ = fit(tmp_path, blobs(), n_clusters=3, linkage="average")
    assert outcome.model.pictures == ["dendrogram"]
    servable = serve("hierarchical", outcome)
    picture = servable.picture("dendrogram")
    assert picture.startswith(b"\x89PNG") and len(picture) > 5000
    with pytest.raises(ValueError, match="draws: dendrogram"):
        servable.picture("samples")
    with pytest.raises(LookupError, match="serves predict"):
        servable.run("encode", blobs().x[:2])


def test_rows_over_the_limit_fail_with_invalid_data_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hierarchical, "MAX_ROWS", 50)
    with pytest.raises(JobFailed) as info:
        fit(tmp_path, blobs(), n_clusters=3)
    assert info.value.code == "invalid_data"
    message = info.value.message
    assert "at most 50 rows" in message and "has 90" in message and "pairwise" in message
    # a data set's rows are known at submit time: the service asks the spec (422)
    spec = HierarchicalSpec.model_validate(
        {"kind": "hierarchical", "dataset": "builtin:wine", "params": {"n_clusters": 3}}
    )
    problem = spec.data_problem(178, 13)
    assert problem is not None and "at most 50 rows" in problem and "has 178" in problem
    assert spec.data_problem(50, 13) is None
    assert spec.data_problem(2, 13) == (
        "n_clusters = 3 is more than the 2 rows of the data set: ask for at most 2"
    )


def test_bad_params_and_data() -> None:
    base = {"kind": "hierarchical", "dataset": "builtin:wine"}
    for bad in (
        {"n_clusters": 3, "linkage": "median"},
        {"n_clusters": 3, "distance_threshold": 1.0},
        {},
        {"n_clusters": 0},
        {"distance_threshold": -1.0},
    ):
        with pytest.raises(ValidationError):
            HierarchicalSpec.model_validate({**base, "params": bad})


def test_more_clusters_than_distinct_rows_fails_with_invalid_data(tmp_path: Path) -> None:
    twins = Dataset(x=np.repeat(np.eye(3), 10, axis=0), name="twins")
    with pytest.raises(JobFailed) as info:
        fit(tmp_path, twins, n_clusters=4)
    assert info.value.code == "invalid_data" and "only 3 distinct rows" in info.value.message


def test_through_the_api(client: TestClient) -> None:
    refused = client.post(
        "/v1/jobs",
        json={**HierarchicalSpec.example, "params": {"n_clusters": 3, "linkage": "median"}},
    )
    assert refused.status_code == 422
    spec = {"kind": "hierarchical", "dataset": "builtin:wine", "params": {"n_clusters": 3}}
    job = submit(client, spec)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    model = client.get(f"/v1/models/{done['model_id']}").json()
    assert model["capabilities"] == ["predict"] and model["pictures"] == ["dendrogram"]
    rows = load_builtin("wine").x[:4].tolist()
    answer = client.post(f"/v1/models/{model['id']}/predict", json={"inputs": rows})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["clusters"]) == 4 and np.shape(answer.json()["distances"]) == (4, 3)
    picture = client.get(f"/v1/models/{model['id']}/dendrogram.png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
