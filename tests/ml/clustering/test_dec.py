"""The `dec` kind: pre-training, latent k-means and KL(P‖Q) refinement through the shared trainer
(with its telemetry), encode / predict, seeds, resuming, and bad data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from ml.clustering.dec import DecSpec
from ml.core.datasets import Dataset, load_builtin
from ml.core.reporting import JobFailed
from tests.ml.anomaly.test_autoencoder import TELEMETRY, serve, train
from tests.ml.clustering.deep_setup import FAST, four_blobs
from tests.ml.clustering.deep_setup import PARAMS as COMMON
from tests.ml.clustering.deep_setup import fit as fit_kind

# A short pre-training leaves the latent k-means imperfect, which gives DEC something to improve.
PARAMS = COMMON


@pytest.fixture(scope="module")
def blobs() -> Dataset:
    return four_blobs()


def fit(tmp: Path, data: Dataset, **overrides: Any) -> tuple[Any, Any]:
    return fit_kind("dec", PARAMS, tmp, data, **overrides)


@pytest.fixture(scope="module")
def trained(blobs: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return fit(tmp_path_factory.mktemp("dec"), blobs)


def test_trains_records_kl_loss_and_telemetry_and_serves(
    trained: tuple[Any, Any], blobs: Dataset
) -> None:
    outcome, reporter = trained
    for name in TELEMETRY[:-1]:  # every one but val_loss: all rows are clustered
        assert name in reporter.points, name  # the refinement's, from the shared trainer
        assert f"pretrain_{name}" in reporter.points, name
    steps, kl = reporter.series("kl_loss")
    _, changed = reporter.series("changed_fraction")
    assert steps[0] == 0 and len(steps) == 1 + FAST["epochs"]  # k-means start, then each epoch
    assert all(v >= 0 and np.isfinite(v) for v in kl)
    assert all(0 <= c <= 1 for c in changed)
    _, losses = reporter.series("loss")
    assert len(losses) == FAST["epochs"]
    assert reporter.fractions == sorted(reporter.fractions) and reporter.fractions[-1] == 1.0
    model = outcome.model
    assert model is not None and model.capabilities == ["encode", "predict"]
    assert {"ari", "nmi", "initial_ari", "initial_nmi"} <= set(model.evaluation)
    assert outcome.result["ari"] == model.evaluation["ari"]
    # refinement improves on the k-means it started from (raw k-means finds these blobs too)
    assert model.evaluation["ari"] > model.evaluation["initial_ari"]
    _, ari = reporter.series("ari")
    assert ari[0] == model.evaluation["initial_ari"] and ari[-1] == model.evaluation["ari"]
    servable = serve("dec", outcome)
    rows = blobs.x[::40]
    latents = servable.run("encode", rows)["latents"]
    assert latents.shape == (10, 3)
    answer = servable.run("predict", rows)
    assert set(answer) == {"clusters", "probabilities"}
    q = answer["probabilities"]
    assert q.shape == (10, 4) and answer["clusters"].shape == (10,)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    assert (answer["clusters"] == q.argmax(axis=1)).all()
    with pytest.raises(LookupError, match="serves encode, predict"):
        servable.run("score", rows)


def test_refinement_stops_once_assignments_settle(tmp_path: Path, blobs: Dataset) -> None:
    outcome, reporter = fit(tmp_path, blobs, params={"tol": 0.5})
    assert outcome.result["converged"] is True
    steps, _ = reporter.series("kl_loss")
    assert len(steps) == 2  # the start, then the first update already changed < 50% of rows
    assert len(reporter.series("loss")[1]) == 1


def test_the_same_seed_gives_the_same_model(
    tmp_path: Path, blobs: Dataset, trained: tuple[Any, Any]
) -> None:
    first, first_points = trained
    second, second_points = fit(tmp_path, blobs)
    assert first.result == second.result
    assert first_points.series("kl_loss") == second_points.series("kl_loss")
    a = serve("dec", first).run("predict", blobs.x)["probabilities"]
    b = serve("dec", second).run("predict", blobs.x)["probabilities"]
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resumes_refinement_from_its_checkpoint(
    tmp_path: Path, blobs: Dataset, trained: tuple[Any, Any]
) -> None:
    whole, _ = trained
    # an attempt that stopped after two refinement epochs left its checkpoints behind ...
    fit(tmp_path, blobs, training={**FAST, "epochs": 2})
    assert (tmp_path / "ckpt" / "refine" / "trainer.json").exists()
    # ... and the next attempt skips pre-training and k-means and goes on from epoch 2
    resumed, points = fit(tmp_path, blobs)
    assert resumed.result["resumed"] is True
    assert not any(name.startswith("pretrain_") for name in points.points)
    assert min(points.series("kl_loss")[0]) > 0
    assert resumed.result["kl_loss"] == pytest.approx(whole.result["kl_loss"], rel=1e-5)
    assert resumed.result["ari"] == whole.result["ari"]
    assert resumed.result["initial_ari"] == whole.result["initial_ari"]


def test_bad_data_fails_with_invalid_data(tmp_path: Path) -> None:
    few = Dataset(x=np.random.default_rng(0).random((3, 4)), name="three")
    with pytest.raises(JobFailed) as info:
        fit(tmp_path, few)
    assert info.value.code == "invalid_data" and "n_clusters = 4" in info.value.message
    twins = Dataset(x=np.repeat(np.eye(3), 30, axis=0), name="twins")
    with pytest.raises(JobFailed) as info:
        fit(tmp_path, twins)
    assert info.value.code == "invalid_data" and "only 3 distinct rows" in info.value.message


def test_the_schema_refuses_bad_params() -> None:
    base = {"kind": "dec", "dataset": "builtin:digits"}
    for bad in ({"n_clusters": 0}, {"alpha": 0}, {"hidden": [0]}, {"latent_dim": 0}):
        with pytest.raises(ValidationError):
            DecSpec.model_validate({**base, "params": bad})


@pytest.mark.slow
def test_the_example_improves_on_latent_k_means_for_digits(tmp_path: Path) -> None:
    spec = {k: v for k, v in DecSpec.example.items() if k not in ("kind", "dataset", "name")}
    outcome, _ = train("dec", spec, tmp_path, load_builtin("digits"))
    evaluation = outcome.model.evaluation
    assert evaluation["ari"] > evaluation["initial_ari"]
    assert evaluation["ari"] > 0.5
