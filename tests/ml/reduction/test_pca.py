"""The `pca` kind: agreement with scikit-learn in float64, the explained-variance target and
history, the randomised method's accuracy, encode / reconstruct / score, anomaly calibration,
bad input, and once through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sklearn.decomposition import PCA

from ml.core.datasets import Dataset, load_builtin
from ml.core.preprocessing import Scaler
from ml.core.reporting import JobFailed
from ml.core.serving import UnsupportedOperation
from ml.reduction.pca import RELATIVE_FLOOR, PcaSpec
from ml.reduction.pca_model import PcaModel, decompose
from tests.conftest import submit
from tests.ml.anomaly.test_autoencoder import serve, train

ALL_ROWS = {"validation_split": 0.0}


def scaled(data: Dataset, preprocessing: dict[str, Any]) -> np.ndarray:
    x = Scaler.from_dict(preprocessing).transform(data.x.astype(np.float64))
    return x.reshape(len(x), -1)


def fitted(outcome: Any) -> PcaModel:
    return PcaModel.load(outcome.model.files["pca"])


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_builtin("digits")


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("name", ["digits", "wine"])
def test_exact_svd_in_float64_matches_scikit_learn(tmp_path: Path, name: str, whiten: bool) -> None:
    data = load_builtin(name)
    params = {"n_components": 5, "method": "svd", "whiten": whiten, **ALL_ROWS}
    outcome, _ = train("pca", {"params": params}, tmp_path, data)
    x = scaled(data, outcome.model.preprocessing)
    reference = PCA(5, whiten=whiten, svd_solver="full").fit(x)
    model = fitted(outcome)
    assert model.components.dtype == np.float64
    # the same components up to sign (and here with scikit-learn's sign convention too)
    signs = np.sign(np.sum(model.components * reference.components_, axis=1))
    np.testing.assert_allclose(model.components * signs[:, None], reference.components_, atol=1e-9)
    evaluation = outcome.model.evaluation
    np.testing.assert_allclose(
        evaluation["explained_variance"], reference.explained_variance_, rtol=1e-6
    )
    np.testing.assert_allclose(
        evaluation["explained_variance_ratio"], reference.explained_variance_ratio_, rtol=1e-6
    )
    latents = serve("pca", outcome).run("encode", data.x)["latents"]
    np.testing.assert_allclose(latents * signs, reference.transform(x), rtol=1e-6, atol=1e-8)


def test_a_variance_target_keeps_the_fewest_components_and_records_the_spectrum(
    tmp_path: Path, digits: Dataset
) -> None:
    spec = {"params": {"n_components": 0.9, **ALL_ROWS}}
    outcome, reporter = train("pca", spec, tmp_path, digits)
    x = scaled(digits, outcome.model.preprocessing)
    reference = PCA(0.9, svd_solver="full").fit(x)
    evaluation = outcome.model.evaluation
    assert evaluation["n_components"] == reference.n_components_ == outcome.result["n_components"]
    assert evaluation["method"] == "svd"
    assert evaluation["total_explained_variance_ratio"] > 0.9
    assert sum(evaluation["explained_variance_ratio"][:-1]) <= 0.9
    # the history covers the whole spectrum, one point per component index
    steps, cumulative = reporter.series("cumulative_explained_variance_ratio")
    assert steps == list(range(1, 65))
    assert np.all(np.diff(cumulative) >= -1e-12) and cumulative[-1] == pytest.approx(1.0)
    _, ratio = reporter.series("explained_variance_ratio")
    k = evaluation["n_components"]
    np.testing.assert_allclose(ratio[:k], evaluation["explained_variance_ratio"], rtol=1e-12)
    _, singular = reporter.series("singular_value")
    np.testing.assert_allclose(singular[:k], reference.singular_values_, rtol=1e-6)
    assert reporter.fractions[-1] == 1.0


def test_the_randomised_method_is_close_to_the_exact_one_on_digits(digits: Dataset) -> None:
    """The accuracy stated in docs/reduction.md (bench/reduction.py measures more)."""
    x = Scaler("standard").fit(digits.x).transform(digits.x.astype(np.float64)).reshape(1797, -1)
    exact = decompose(x, method="svd")
    fast = decompose(x, method="randomized", n_components=10)
    relative = np.abs(fast.explained_variance / exact.explained_variance[:10] - 1)
    assert relative[0] < 1e-6 and relative[:5].max() < 1e-4 and relative.max() < 2e-3
    centred = x - x.mean(axis=0)

    def captured(components: np.ndarray) -> float:
        return float(np.sum((centred @ components.T) ** 2))

    assert captured(fast.components) >= (1 - 1e-4) * captured(exact.components[:10])
    assert fast.total_variance == pytest.approx(exact.total_variance, rel=1e-12)
    # more passes over the data, closer
    tighter = decompose(x, method="randomized", n_components=10, power_iterations=10)
    assert np.abs(tighter.explained_variance / exact.explained_variance[:10] - 1).max() < 1e-6


def test_auto_picks_the_randomised_method_for_wide_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    wide = Dataset(x=rng.standard_normal((600, 700)), name="wide")
    outcome, _ = train("pca", {"params": {"n_components": 20, **ALL_ROWS}}, tmp_path, wide)
    assert outcome.result["method"] == "randomized"
    assert outcome.model.evaluation["n_components"] == 20


def test_serves_encode_reconstruct_and_score(tmp_path: Path, digits: Dataset) -> None:
    outcome, _ = train("pca", {"params": {"n_components": 64, **ALL_ROWS}}, tmp_path, digits)
    servable = serve("pca", outcome)
    rows = digits.x[:7]
    assert servable.run("encode", rows)["latents"].shape == (7, 64)
    # every component kept: reconstructions are the rows themselves, in raw units
    back = servable.run("reconstruct", rows)["reconstructions"]
    assert back.shape == rows.shape
    np.testing.assert_allclose(back, rows, atol=1e-9)
    answer = servable.run("score", rows)
    assert answer["scores"].shape == (7,)
    assert answer["threshold"] == outcome.model.calibration["threshold"]
    assert (answer["is_anomaly"] == (answer["scores"] > answer["threshold"])).all()
    with pytest.raises(UnsupportedOperation, match="serves encode, reconstruct, score"):
        servable.run("predict", rows)


def test_scores_breast_cancer_anomalies_with_a_calibrated_threshold(tmp_path: Path) -> None:
    data = load_builtin("breast_cancer")
    params = {"n_components": 10, "contamination": 0.1, "validation_split": 0.2}
    outcome, _ = train("pca", {"params": params}, tmp_path, data)
    model = outcome.model
    assert model.evaluation["roc_auc"] > 0.85 and model.evaluation["evaluation_anomalies"] > 0
    assert outcome.result["roc_auc"] == model.evaluation["roc_auc"]
    calibration = model.calibration
    assert calibration["score"] == "standardized_reconstruction_error"
    assert calibration["calibration_rows"] > 30
    assert 0.0 < model.evaluation["false_positive_rate"] < 0.35
    # the threshold is the 0.9 quantile of held-out normal scores: 10% of those lie above it
    servable = serve("pca", outcome)
    benign = data.x[data.y == 0]
    flagged = servable.run("score", benign)["is_anomaly"].mean()
    assert 0.02 < flagged < 0.25


def test_a_feature_constant_on_the_fitted_rows_cannot_dominate_the_score(tmp_path: Path) -> None:
    # a pixel blank in every training row: its residual variance is 0, and with an absolute
    # floor alone a new row that uses it would score ~1e5; the floor relative to the other
    # features' keeps its weight that of a typical feature's, times 1 / RELATIVE_FLOOR at most
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    x[:, -1] = 0.0
    data = Dataset(x=x, name="blank")
    outcome, _ = train("pca", {"params": {"n_components": 3, **ALL_ROWS}}, tmp_path, data)
    model = fitted(outcome)
    scaler = Scaler.from_dict(outcome.model.preprocessing)
    variance = model.residual(scaler.transform(x)).var(axis=0)
    assert variance[-1] == 0.0
    floored = np.maximum(variance, RELATIVE_FLOOR * variance.mean())
    np.testing.assert_allclose(model.residual_variance, floored, rtol=1e-12)
    new = rng.normal(size=(5, 8))
    new[:, -1] = 1.0
    scores = serve("pca", outcome).run("score", new)["scores"]
    residual = model.residual(scaler.transform(new))
    np.testing.assert_allclose(scores, np.mean(residual**2 / floored, axis=1), rtol=1e-10)
    assert scores.max() < 100


def test_bad_components_are_refused(tmp_path: Path) -> None:
    # a data set's features are known at submit time (the service asks the spec): 422
    too_many = PcaSpec.model_validate(
        {"kind": "pca", "dataset": "builtin:digits", "params": {"n_components": 65}}
    )
    assert too_many.data_problem(1797, 64) == (
        "n_components = 65 is more than the 64 features of builtin:digits: ask for at most 64"
    )
    assert too_many.data_problem(1797, 65) is None
    with pytest.raises(ValidationError, match="needs the whole spectrum"):
        PcaSpec.model_validate(
            {"kind": "pca", "dataset": "x", "params": {"n_components": 0.5, "method": "randomized"}}
        )
    for bad in (0, 1.0, -0.5, 1.5):
        with pytest.raises(ValidationError):
            PcaSpec.model_validate({"kind": "pca", "dataset": "x", "params": {"n_components": bad}})
    # an upload's are known only in the worker: invalid_data
    upload = Dataset(x=np.random.default_rng(0).random((40, 6)), name="upload")
    with pytest.raises(JobFailed) as info:
        train("pca", {"params": {"n_components": 7}}, tmp_path, upload)
    assert info.value.code == "invalid_data"
    assert "7 is more than the 6 features" in info.value.message
    few = Dataset(x=np.random.default_rng(0).random((5, 6)), name="few")
    with pytest.raises(JobFailed) as info:
        train("pca", {"params": {"n_components": 6, **ALL_ROWS}}, tmp_path, few)
    assert info.value.code == "invalid_data" and "5 rows" in info.value.message


def test_through_the_api(client: TestClient) -> None:
    refused = client.post("/v1/jobs", json={**PcaSpec.example, "params": {"n_components": 100}})
    assert refused.status_code == 422
    assert "64 features" in refused.json()["error"]["message"]
    job = submit(client, PcaSpec.example)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    model = client.get(f"/v1/models/{done['model_id']}").json()
    assert model["capabilities"] == ["encode", "reconstruct", "score"]
    k = model["evaluation"]["n_components"]
    assert len(model["evaluation"]["explained_variance_ratio"]) == k
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    assert metrics["explained_variance_ratio"]["steps"][:3] == [1, 2, 3]
    rows = load_builtin("digits").x[:2].tolist()
    latents = client.post(f"/v1/models/{model['id']}/encode", json={"inputs": rows})
    assert latents.status_code == 200, latents.text
    assert np.shape(latents.json()["latents"]) == (2, k)
    scores = client.post(f"/v1/models/{model['id']}/score", json={"inputs": rows}).json()
    assert len(scores["scores"]) == 2 and "threshold" in scores
