"""The `detector` kind: each method's scores against scikit-learn's own (ECOD against the paper's
formula written out directly), the stored arrays scoring in any block size, the threshold
calibrated on held-out normal rows, bad params refused, and once through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from scipy.stats import skew
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from ml.anomaly import detector_model as dm
from ml.anomaly.detector import DetectorParams, DetectorSpec, fit
from ml.core.datasets import Dataset, load_builtin
from ml.core.reporting import JobFailed
from ml.core.serving import UnsupportedOperation
from ml.reduction import shared as reduction
from ml.reduction.pca import split
from tests.conftest import submit
from tests.ml.anomaly.test_autoencoder import serve, train

METHODS = ["isolation_forest", "one_class_svm", "local_outlier_factor", "ecod"]


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    """Skewed training rows (so ECOD's automatic tail differs per feature) and wider test rows."""
    rng = np.random.default_rng(7)
    train_rows = np.column_stack([rng.standard_normal((300, 3)), rng.exponential(size=(300, 2))])
    train_rows[:, 4] *= -1  # one left-skewed feature
    return train_rows, 1.5 * rng.standard_normal((200, 5))


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return load_builtin("breast_cancer")


def test_isolation_forest_scores_as_scikit_learn(rows: Any) -> None:
    x, t = rows
    model = dm.DetectorModel("isolation_forest", dm.fit_isolation_forest(x, 50, 128, seed=3))
    forest = IsolationForest(n_estimators=50, max_samples=128, random_state=3).fit(x)
    np.testing.assert_allclose(model.score(t), -forest.score_samples(t), rtol=1e-12)


def test_one_class_svm_scores_as_scikit_learn(rows: Any) -> None:
    x, t = rows
    gamma = dm.rbf_gamma(x)
    model = dm.DetectorModel("one_class_svm", dm.fit_one_class_svm(x, 0.1, gamma))
    svm = OneClassSVM(nu=0.1, gamma="scale").fit(x)
    np.testing.assert_allclose(model.score(t), -svm.score_samples(t), rtol=1e-9, atol=1e-12)


def test_local_outlier_factor_scores_as_scikit_learn_novelty_mode(rows: Any) -> None:
    x, t = rows
    model = dm.DetectorModel("local_outlier_factor", dm.fit_local_outlier_factor(x, 15))
    lof = LocalOutlierFactor(n_neighbors=15, novelty=True).fit(x)
    np.testing.assert_allclose(model.score(t), -lof.score_samples(t), rtol=1e-9)


def ecod_reference(train_rows: np.ndarray, row: np.ndarray) -> float:
    """Li et al. 2022, Algorithm 1, on the training rows with the scored row among them."""
    pooled = np.vstack([train_rows, row])
    left = -np.log(np.mean(pooled <= row, axis=0)).sum()
    right = -np.log(np.mean(pooled >= row, axis=0)).sum()
    tails = np.where(
        skew(train_rows, axis=0) < 0, np.mean(pooled <= row, axis=0), np.mean(pooled >= row, axis=0)
    )
    return float(max(left, right, -np.log(tails).sum()))


def test_ecod_scores_as_the_papers_formula(rows: Any) -> None:
    x, t = rows
    model = dm.DetectorModel("ecod", dm.fit_ecod(x))
    # ties with training values, and values beyond every training value, too
    probes = np.vstack([t, x[:5], x.max(axis=0) + 1, x.min(axis=0) - 1])
    expected = [ecod_reference(x, row) for row in probes]
    np.testing.assert_allclose(model.score(probes), expected, rtol=1e-12)
    assert np.isfinite(model.score(probes)).all()


@pytest.mark.parametrize("method", METHODS)
def test_scores_do_not_depend_on_the_block_size_and_survive_the_file(
    method: str, rows: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, t = rows
    params = DetectorParams(method=method)
    model = fit(params, x)
    whole = model.score(t)
    loaded = dm.DetectorModel.load(model.save(tmp_path / "d.npz"))
    monkeypatch.setattr(dm, "BLOCK_VALUES", 7)  # blocks of one row, or a few
    np.testing.assert_allclose(loaded.score(t), whole, rtol=1e-12)
    assert loaded.score(t[:0]).shape == (0,)


def test_a_model_file_with_pickled_objects_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, method=np.str_("ecod"), sorted=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        dm.DetectorModel.load(path)


@pytest.mark.parametrize("method", METHODS)
def test_calibrates_on_held_out_normal_rows_and_evaluates(
    method: str, tmp_path: Path, cancer: Dataset
) -> None:
    params = {"method": method, "contamination": 0.1, "validation_split": 0.3}
    outcome, reporter = train("detector", {"params": params}, tmp_path, cancer)
    model = outcome.model
    assert model is not None and model.capabilities == ["score"]
    # the threshold is the 0.9 quantile of the held-out normal rows' scores
    spec = DetectorSpec.model_validate({**DetectorSpec.example, "params": params})
    parts = split(reduction.load_rows(_context(cancer), "detector"), spec.params)
    servable = serve("detector", outcome)
    normal = servable.run("score", cancer.x[parts.calibration])["scores"]
    assert model.calibration["calibration_rows"] == len(parts.calibration) > 30
    assert model.calibration["threshold"] == pytest.approx(np.quantile(normal, 0.9), rel=1e-12)
    assert model.calibration["normal_score_mean"] == pytest.approx(normal.mean(), rel=1e-12)
    evaluation = model.evaluation
    assert evaluation["method"] == method and evaluation["evaluation_anomalies"] > 0
    assert evaluation["roc_auc"] > 0.85 and evaluation["pr_auc"] > 0.7
    assert outcome.result["roc_auc"] == evaluation["roc_auc"]
    assert reporter.fractions[-1] == 1.0
    answer = servable.run("score", cancer.x[:9])
    assert (answer["is_anomaly"] == (answer["scores"] > answer["threshold"])).all()
    with pytest.raises(UnsupportedOperation, match="serves score"):
        servable.run("encode", cancer.x[:2])


def _context(data: Dataset) -> Any:
    from ml.core.reporting import RunContext

    return RunContext(Path("."), Path("."), data)


def test_a_target_false_positive_rate_sets_the_threshold(tmp_path: Path, cancer: Dataset) -> None:
    params = {"method": "ecod", "target_fpr": 0.2, "validation_split": 0.3}
    outcome, _ = train("detector", {"params": params}, tmp_path, cancer)
    spec = DetectorSpec.model_validate({**DetectorSpec.example, "params": params})
    parts = split(reduction.load_rows(_context(cancer), "detector"), spec.params)
    normal = serve("detector", outcome).run("score", cancer.x[parts.calibration])["scores"]
    assert outcome.model.calibration["threshold"] == pytest.approx(np.quantile(normal, 0.8))


def test_without_labels_it_calibrates_and_skips_the_evaluation(tmp_path: Path) -> None:
    data = Dataset(x=np.random.default_rng(1).standard_normal((200, 4)), name="upload")
    outcome, _ = train("detector", {"params": {"method": "ecod"}}, tmp_path, data)
    assert outcome.model.evaluation == {"method": "ecod"}
    assert outcome.model.calibration["calibration_rows"] == 20
    few = Dataset(x=np.ones((6, 2)), name="few")
    with pytest.raises(JobFailed, match="normal rows"):
        train("detector", {"params": {"method": "ecod"}}, tmp_path, few)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "ecod", "nu": 0.1}, "nu applies to method one_class_svm only"),
        ({"method": "one_class_svm", "n_neighbors": 5}, "applies to method local_outlier_factor"),
        ({"method": "kmeans"}, "method"),
        ({"n_estimators": 0}, "n_estimators"),
        ({"method": "one_class_svm", "gamma": -1.0}, "gamma"),
        ({"max_fit_rows": 10**9}, "max_fit_rows"),
        ({"normal_label": 0, "anomaly_label": 1}, "not both"),
        ({"contamination": 0.7}, "contamination"),
    ],
)
def test_bad_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DetectorSpec.model_validate({**DetectorSpec.example, "params": params})


def test_sizes_grow_with_what_each_method_keeps() -> None:
    def size(**params: Any) -> Any:
        spec = DetectorSpec.model_validate({**DetectorSpec.example, "params": params})
        return spec.size_estimate(100_000, (30,))

    assert size(method="ecod").total_parameters == 100_000 * 30 + 30
    assert size(method="local_outlier_factor").total_parameters == 20_000 * 32
    forest = size(method="isolation_forest", n_estimators=10).total_parameters
    assert forest == 10 * 511 * 5
    assert size(method="one_class_svm").total_memory > size(method="ecod").total_memory


def test_through_the_api(client: TestClient) -> None:
    bad = {**DetectorSpec.example, "params": {"method": "ecod", "n_estimators": 5}}
    refused = client.post("/v1/jobs", json=bad)
    assert refused.status_code == 422
    assert "n_estimators applies to method isolation_forest" in refused.text
    job = submit(client, {**DetectorSpec.example, "params": {"method": "local_outlier_factor"}})
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["device"] == "CPU:0" and done["result"]["roc_auc"] > 0.85
    model = client.get(f"/v1/models/{done['model_id']}").json()
    assert model["capabilities"] == ["score"] and model["kind"] == "detector"
    rows = load_builtin("breast_cancer").x[:3].tolist()
    answer = client.post(f"/v1/models/{model['id']}/score", json={"inputs": rows})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["scores"]) == 3 and body["threshold"] == model["calibration"]["threshold"]
    wrong = client.post(f"/v1/models/{model['id']}/score", json={"inputs": [[1.0, 2.0]]})
    assert wrong.status_code == 422, wrong.text
    unsupported = client.post(f"/v1/models/{model['id']}/encode", json={"inputs": rows})
    assert unsupported.status_code == 409, unsupported.text
    assert unsupported.json()["error"]["code"] == "unsupported_operation"
