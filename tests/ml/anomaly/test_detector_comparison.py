"""The `detector_comparison` kind: each detector as its own kind would train it on the same rows,
ranked by ROC-AUC, the ROC picture, calibration statistics without labels, bad params, the
submit-time size, and once through the API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sklearn.metrics import auc as area
from sklearn.metrics import roc_auc_score

from ml.anomaly.comparison import ComparisonSpec
from ml.core.datasets import Dataset, load_builtin
from ml.core.serving import UnsupportedOperation
from tests.conftest import submit
from tests.ml.anomaly.test_autoencoder import serve, train

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return load_builtin("breast_cancer")


def test_each_detector_scores_as_its_own_kind_and_the_best_leads(
    tmp_path: Path, cancer: Dataset
) -> None:
    shared = {"contamination": 0.1, "seed": 3}
    detectors = ["ecod", "local_outlier_factor", "isolation_forest"]
    outcome, reporter = train(
        "detector_comparison", {"params": {**shared, "detectors": detectors}}, tmp_path, cancer
    )
    result = outcome.result
    assert result["labelled"] and sorted(result["ranking"]) == sorted(detectors)
    aucs = [r["roc_auc"] for r in result["detectors"]]
    assert aucs == sorted(aucs, reverse=True) and result["best"] == result["ranking"][0]
    for record in result["detectors"]:
        alone, _ = train(
            "detector",
            {"params": {**shared, "method": record["detector"]}},
            tmp_path / record["detector"],
            cancer,
        )
        assert alone.model is not None
        assert record["roc_auc"] == pytest.approx(alone.model.evaluation["roc_auc"], abs=1e-12)
        assert record["pr_auc"] == pytest.approx(alone.model.evaluation["pr_auc"], abs=1e-12)
        assert record["threshold"] == alone.model.calibration["threshold"]
        assert record["evaluation_anomalies"] == alone.model.evaluation["evaluation_anomalies"]
    assert reporter.series("roc_auc")[0] == [1, 2, 3]
    assert reporter.fractions[-1] == 1.0 and np.all(np.diff(reporter.fractions) >= 0)
    # the picture, and no operation
    assert outcome.model is not None and outcome.model.capabilities == []
    servable = serve("detector_comparison", outcome)
    assert servable.picture("roc").startswith(PNG)
    with pytest.raises(UnsupportedOperation):
        servable.run("score", cancer.x[:2])
    with pytest.raises(ValueError, match="roc"):
        servable.picture("samples")


def test_the_stored_curves_give_back_the_aucs(tmp_path: Path, cancer: Dataset) -> None:
    outcome, _ = train("detector_comparison", {"params": {"detectors": ["ecod"]}}, tmp_path, cancer)
    servable = serve("detector_comparison", outcome)
    (fpr, tpr), (auc,) = servable.curves[0], servable.aucs
    assert area(fpr, tpr) == pytest.approx(auc, abs=1e-12)
    assert auc == outcome.result["detectors"][0]["roc_auc"]
    truth = np.r_[np.zeros(5000, bool), np.ones(5000, bool)]
    scores = np.random.default_rng(0).standard_normal(10_000) + truth
    from ml.anomaly.comparison_model import MAX_POINTS, roc_curve

    fpr, tpr = roc_curve(truth, scores)
    assert len(fpr) <= MAX_POINTS
    # thinning keeps the curve's area within a few of its steps
    assert area(fpr, tpr) == pytest.approx(roc_auc_score(truth, scores), abs=5e-3)


def test_without_labels_it_reports_calibration_statistics(tmp_path: Path) -> None:
    data = Dataset(x=np.random.default_rng(2).standard_normal((300, 5)), name="upload")
    params = {"detectors": ["ecod", "isolation_forest"], "contamination": 0.2}
    outcome, _ = train("detector_comparison", {"params": params}, tmp_path, data)
    assert outcome.model is None
    result = outcome.result
    assert not result["labelled"] and result["best"] is None and result["calibration_rows"] == 30
    for record in result["detectors"]:
        assert "roc_auc" not in record and record["calibration_rows"] == 30
        assert abs(record["flagged_share"] - 0.2) <= 1 / 30 + 1e-12


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"detectors": ["ecod", "ecod"]}, "each detector once"),
        ({"detectors": []}, "at least 1"),
        ({"detectors": ["kmeans"]}, "detectors"),
        ({"epochs": 0}, "epochs"),
        ({"normal_label": 0, "anomaly_label": 1}, "not both"),
    ],
)
def test_bad_params_are_refused(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ComparisonSpec.model_validate({**ComparisonSpec.example, "params": params})


def test_its_size_is_its_costliest_detectors() -> None:
    spec = ComparisonSpec.model_validate(
        {**ComparisonSpec.example, "params": {"detectors": ["ecod", "one_class_svm"]}}
    )
    estimate = spec.size_estimate(10_000, (30,))
    assert estimate is not None
    members = [m.size_estimate(10_000, (30,)) for m in spec.members().values()]
    assert estimate.total_memory == max(m.total_memory for m in members if m is not None)
    assert set(estimate.memory) <= {"runtime", "dataset", "params.detectors"}
    assert spec.data_problem(569, 30) is None


def test_through_the_api(client: TestClient) -> None:
    job = submit(client, ComparisonSpec.example)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert len(done["result"]["detectors"]) == len(ComparisonSpec.example["params"]["detectors"])
    model = client.get(f"/v1/models/{done['model_id']}").json()
    assert model["pictures"] == ["roc"] and model["capabilities"] == []
    picture = client.get(f"/v1/models/{model['id']}/roc.png")
    assert picture.status_code == 200 and picture.content.startswith(PNG)
    refused = client.post(f"/v1/models/{model['id']}/score", json={"inputs": [[0.0] * 30]})
    assert refused.status_code == 409, refused.text
