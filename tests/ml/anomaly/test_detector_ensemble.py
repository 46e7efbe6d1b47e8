"""The `ensemble` kind: members trained as their own kinds, standardised on the held-out normal
rows and combined; the threshold calibrated on the combined scores; bad params; the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from scipy.stats import percentileofscore

from ml.anomaly.ensemble import EnsembleSpec
from ml.anomaly.ensemble_model import Standardiser
from ml.core.datasets import Dataset, load_builtin
from ml.core.reporting import JobFailed, RunContext
from ml.core.serving import UnsupportedOperation
from ml.reduction import shared as reduction
from ml.reduction.pca import split
from tests.conftest import submit
from tests.ml.anomaly.test_autoencoder import serve, train

CLASSICAL = ["isolation_forest", "local_outlier_factor", "ecod"]


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return load_builtin("breast_cancer")


def ensemble(members: list[str], **params: Any) -> dict[str, Any]:
    return {"params": {"members": [{"detector": m} for m in members], **params}}


@pytest.mark.parametrize(("standardise", "combine"), [("zscore", "mean"), ("rank", "max")])
def test_combines_its_members_standardised_scores(
    standardise: str, combine: str, tmp_path: Path, cancer: Dataset
) -> None:
    shared = {"seed": 2, "contamination": 0.1}
    spec = ensemble(CLASSICAL, standardise=standardise, combine=combine, selection="none", **shared)
    outcome, reporter = train("ensemble", spec, tmp_path / "e", cancer)
    parts = split(reduction.load_rows(RunContext(Path("."), Path("."), cancer), "x"), _params())
    held_out, probe = cancer.x[parts.calibration], cancer.x[:50]
    columns, normal = [], []
    for method in CLASSICAL:
        alone, _ = train(
            "detector", {"params": {**shared, "method": method}}, tmp_path / method, cancer
        )
        servable = serve("detector", alone)
        reference = servable.run("score", held_out)["scores"]
        scores = servable.run("score", probe)["scores"]
        if standardise == "zscore":
            columns.append((scores - reference.mean()) / reference.std())
            normal.append((reference - reference.mean()) / reference.std())
        else:
            columns.append([percentileofscore(reference, s, kind="mean") / 100 for s in scores])
            normal.append([percentileofscore(reference, s, kind="mean") / 100 for s in reference])
    fold = np.max if combine == "max" else np.mean
    expected = fold(np.array(columns), axis=0)
    served = serve("ensemble", outcome)
    answer = served.run("score", probe)
    np.testing.assert_allclose(answer["scores"], expected, rtol=1e-9, atol=1e-12)
    cut = np.quantile(fold(np.array(normal), axis=0), 0.9)
    assert outcome.model.calibration["threshold"] == pytest.approx(cut, rel=1e-9)
    assert answer["threshold"] == outcome.model.calibration["threshold"]
    assert (answer["is_anomaly"] == (answer["scores"] > answer["threshold"])).all()
    assert outcome.model.evaluation["roc_auc"] > 0.85 and outcome.result["members"] == CLASSICAL
    assert reporter.fractions[-1] == 1.0
    with pytest.raises(UnsupportedOperation):
        served.run("encode", probe)


def _params() -> Any:
    """The split every member shares (the ensemble's seed 2 and validation_split)."""
    return EnsembleSpec.model_validate(
        {**EnsembleSpec.example, "params": {**ensemble(CLASSICAL)["params"], "seed": 2}}
    ).params


def test_rank_is_the_mid_rank_share() -> None:
    reference = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    standard = Standardiser.fit(reference, "rank")
    probes = np.array([0.0, 1.0, 2.0, 2.5, 5.0, 9.0])
    expected = [percentileofscore(reference, p, kind="mean") / 100 for p in probes]
    np.testing.assert_allclose(standard(probes), expected)
    again = Standardiser.from_dict(standard.to_dict())
    np.testing.assert_allclose(again(probes), expected)
    many = Standardiser.fit(np.random.default_rng(0).standard_normal(100_000), "rank")
    assert many.reference is not None and len(many.reference) == 2001
    flat = Standardiser.fit(np.ones(10), "zscore")
    assert np.isfinite(flat(np.array([1.0, 2.0]))).all()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"members": [{"detector": "ecod"}]}, "combines 2 to 8 detectors"),
        ({"members": [{"detector": "ecod"}, {"detector": "kmeans"}]}, "detector"),
        (
            {"members": [{"detector": "isolation_forest", "params": {"n_estimators": 0}}] * 2},
            "members.0 \\(isolation_forest\\): params.n_estimators",
        ),
        (
            {"members": [{"detector": "ecod", "params": {"n_neighbors": 3}}] * 2},
            "n_neighbors applies to method local_outlier_factor",
        ),
        ({"members": [{"detector": "pca", "params": {"seed": 3}}] * 2}, "cannot set seed"),
        ({"members": [{"detector": "ecod"}] * 2, "combine": "median"}, "combine"),
    ],
)
def test_bad_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EnsembleSpec.model_validate({**EnsembleSpec.example, "params": params})


def test_its_size_counts_every_member(tmp_path: Path) -> None:
    spec = EnsembleSpec.model_validate({**EnsembleSpec.example, **ensemble(["ecod", "ecod"])})
    estimate = spec.size_estimate(1000, (30,))
    assert estimate is not None and estimate.total_parameters == 2 * (1000 * 30 + 30)
    few = Dataset(x=np.random.default_rng(0).standard_normal((40, 3)), name="few")
    with pytest.raises(JobFailed, match="held out to standardise"):
        train("ensemble", ensemble(["ecod", "isolation_forest"]), tmp_path, few)


def test_through_the_api(client: TestClient) -> None:
    bad = {**EnsembleSpec.example, "params": {"members": [{"detector": "pca"}]}}
    assert client.post("/v1/jobs", json=bad).status_code == 422
    job = submit(client, EnsembleSpec.example)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    model = client.get(f"/v1/models/{done['model_id']}").json()
    # `selection` auto on a labelled data set: the members chosen on its labelled rows serve.
    chosen = [c["member"] for c in done["result"]["selection"]["candidates"] if c["chosen"]]
    assert done["result"]["selection"]["method"] == "labelled"
    assert done["result"]["members"] == chosen
    assert model["capabilities"] == ["score"]
    assert [m["detector"] for m in model["calibration"]["members"]] == chosen
    rows = load_builtin("breast_cancer").x[:4].tolist()
    answer = client.post(f"/v1/models/{model['id']}/score", json={"inputs": rows})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["scores"]) == 4
    wrong = client.post(f"/v1/models/{model['id']}/score", json={"inputs": [[1.0, 2.0]]})
    assert wrong.status_code == 422, wrong.text


def test_over_registered_models(client: TestClient) -> None:
    """`params.models`: registered models, pinned to their ids at submit, standardised on the
    ensemble's held-out rows next to the members it trains; the ensemble keeps their files, so
    it still serves when they are deleted."""
    pca = submit(
        client,
        {"kind": "pca", "name": "cancer-pca", "dataset": "builtin:breast_cancer",
         "params": {"n_components": 5}},
    )  # fmt: skip
    forest = submit(
        client,
        {"kind": "detector", "name": "cancer-forest", "dataset": "builtin:breast_cancer",
         "params": {"method": "isolation_forest"}},
    )  # fmt: skip
    ids = [client.get(f"/v1/jobs/{j['id']}").json()["model_id"] for j in (pca, forest)]
    spec = {
        "kind": "ensemble",
        "dataset": "builtin:breast_cancer",
        "params": {
            "models": ["cancer-pca", "cancer-forest@1"],
            "members": [{"detector": "ecod"}],
            "selection": "none",
        },
    }
    job = submit(client, spec)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["spec"]["params"]["models"] == ids  # pinned at submit
    assert done["result"]["members"] == ["ecod", "cancer-pca@1", "cancer-forest@1"]
    model = client.get(f"/v1/models/{done['model_id']}").json()
    stored = model["calibration"]["members"]
    assert [m.get("model") for m in stored] == [None, *ids]
    rows = load_builtin("breast_cancer").x[:6].tolist()
    before = client.post(f"/v1/models/{model['id']}/score", json={"inputs": rows}).json()
    # The registered models' own scores, standardised, are the ensemble's columns.
    own = [
        np.asarray(client.post(f"/v1/models/{i}/score", json={"inputs": rows}).json()["scores"])
        for i in ids
    ]
    for column, member in zip(own, stored[1:], strict=True):
        standard = Standardiser.from_dict(member["standard"])
        assert np.all(np.isfinite(standard(column)))
    # Chosen on the labelled rows, a registered model is named as in `members`.
    chosen = submit(client, {**spec, "params": {**spec["params"], "selection": "labelled"}})
    record = client.get(f"/v1/jobs/{chosen['id']}").json()["result"]["selection"]
    assert [c["member"] for c in record["candidates"]] == done["result"]["members"]
    for i in ids:
        assert client.delete(f"/v1/models/{i}").status_code == 204
    after = client.post(f"/v1/models/{model['id']}/score", json={"inputs": rows}).json()
    np.testing.assert_allclose(after["scores"], before["scores"], rtol=1e-6)

    # Refused at submit, naming the field: unknown, serving no score, twice (another
    # tenant's: tests/security/test_tenants.py).
    kmeans = submit(
        client,
        {"kind": "kmeans", "name": "cancer-kmeans", "dataset": "builtin:breast_cancer",
         "params": {"n_clusters": 2}},
    )  # fmt: skip
    assert client.get(f"/v1/jobs/{kmeans['id']}").json()["status"] == "succeeded"
    again = submit(
        client, {"kind": "pca", "name": "cancer-pca", "dataset": "builtin:breast_cancer"}
    )
    assert client.get(f"/v1/jobs/{again['id']}").json()["status"] == "succeeded"
    cases = {
        "nonesuch": "unknown_model",
        "cancer-kmeans": "unsupported_model",
    }
    for ref, kind in cases.items():
        bad = {**spec, "params": {"models": ["cancer-pca", ref]}}
        answer = client.post("/v1/jobs", json=bad)
        assert answer.status_code == 422, answer.text
        detail = answer.json()["error"]["details"][0]
        assert (detail["field"], detail["type"]) == ("body.params.models.1", kind), detail
    again_id = client.get(f"/v1/jobs/{again['id']}").json()["model_id"]
    twice = {**spec, "params": {"models": ["cancer-pca", again_id]}}  # by name, then by id
    detail = client.post("/v1/jobs", json=twice).json()["error"]["details"][0]
    assert detail["type"] == "duplicate_model"
    for params in (
        {"models": ["cancer-pca"]},
        {"models": ["x"] * 5, "members": [{"detector": "ecod"}] * 4},
        {"models": ["", "cancer-pca"]},
        {"models": ["a" * 301, "cancer-pca"]},
    ):
        assert client.post("/v1/jobs", json={**spec, "params": params}).status_code == 422, params
