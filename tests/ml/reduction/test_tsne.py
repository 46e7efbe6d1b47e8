"""The `tsne` kind: the affinities against scikit-learn's, training through the shared trainer
(KL history, early exaggeration, telemetry), trustworthiness next to scikit-learn's TSNE, encode
on new rows, the embedding picture, bad input, and once through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from scipy.spatial.distance import squareform
from sklearn.manifold._t_sne import _joint_probabilities
from sklearn.metrics import pairwise_distances

from ml.core.datasets import Dataset, load_builtin
from ml.core.reporting import JobFailed
from ml.core.splits import split_indices
from ml.reduction.tsne import TsneSpec
from tests.conftest import submit
from tests.ml.anomaly.test_autoencoder import TELEMETRY, serve, train

FAST = {"epochs": 8, "batch_size": 120, "seed": 0, "telemetry": {"every_steps": 3}}
PARAMS = {
    "perplexity": 20,
    "exaggeration_epochs": 2,
    "hidden": [64],
    "evaluation_rows": 200,
}


@pytest.fixture(scope="module")
def blobs() -> Dataset:
    """Five Gaussian blobs in 10-D, 80 rows each."""
    rng = np.random.default_rng(2)
    centres = 4.0 * rng.standard_normal((5, 10))
    x = np.concatenate([c + rng.standard_normal((80, 10)) for c in centres]).astype(np.float32)
    return Dataset(x=x, y=np.repeat(np.arange(5), 80), name="blobs", label_type="class")


def fit(tmp: Path, data: Dataset, **overrides: Any) -> tuple[Any, Any]:
    params = {**PARAMS, **overrides.pop("params", {})}
    spec = {"params": params, "training": {**FAST, **overrides.pop("training", {})}, **overrides}
    return train("tsne", spec, tmp, data)


@pytest.fixture(scope="module")
def trained(blobs: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return fit(tmp_path_factory.mktemp("tsne"), blobs)


def test_affinities_are_scikit_learns_exact_ones() -> None:
    import tensorflow as tf

    from ml.reduction.tsne_tf import joint_probabilities

    x = np.random.default_rng(0).standard_normal((150, 6)).astype(np.float32)
    distances = pairwise_distances(x, squared=True).astype(np.float32)
    reference = squareform(_joint_probabilities(distances, 25.0, 0))
    ours = joint_probabilities(tf.constant(x), 25.0).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-7)
    assert ours.sum() == pytest.approx(1.0, rel=1e-5) and np.allclose(ours, ours.T)
    assert np.all(np.diag(ours) == 0)


def test_trains_with_telemetry_kl_history_and_early_exaggeration(
    trained: tuple[Any, Any],
) -> None:
    _, reporter = trained
    for name in TELEMETRY:
        assert name in reporter.points, name
    steps, alpha = reporter.series("exaggeration")
    # 3 steps an epoch; the first two epochs fit KL(12 P‖Q), the others KL(P‖Q)
    assert steps == list(range(3, 25, 3))
    assert alpha == [12.0, 12.0] + [1.0] * 6
    _, kl = reporter.series("kl_divergence")
    _, energy = reporter.series("internal_energy")
    assert all(v > 0 and np.isfinite(v) for v in kl)
    assert energy[0] > kl[0] and energy[-1] == pytest.approx(kl[-1], rel=1e-6)
    _, losses = reporter.series("loss")
    assert len(losses) == FAST["epochs"] and losses[-1] < losses[0]
    assert reporter.fractions[-1] == 1.0


def test_records_trustworthiness_next_to_scikit_learn(trained: tuple[Any, Any]) -> None:
    outcome, _ = trained
    evaluation = outcome.model.evaluation
    assert evaluation["trustworthiness_rows"] == 200
    assert evaluation["trustworthiness"] > 0.9
    assert evaluation["trustworthiness_held_out"] > 0.85
    assert evaluation["sklearn_trustworthiness"] > 0.9
    assert evaluation["kl_divergence"] == outcome.result["final_loss"]
    assert {"sklearn_kl_divergence", "sklearn_seconds"} <= set(evaluation)


def test_encodes_new_rows_and_draws_the_training_embedding(
    trained: tuple[Any, Any], blobs: Dataset
) -> None:
    outcome, _ = trained
    model = outcome.model
    assert model.capabilities == ["encode"] and model.pictures == ["embedding"]
    servable = serve("tsne", outcome)
    fresh = blobs.x[:3] + 0.1
    assert servable.run("encode", fresh)["latents"].shape == (3, 2)
    # the stored embedding is the network's embedding of the training rows, with their labels
    train_rows = split_indices(blobs.rows, 0.1, 0.0, 0).train
    with np.load(model.files["embedding"]) as saved:
        np.testing.assert_allclose(
            saved["embedding"], servable.run("encode", blobs.x[train_rows])["latents"], atol=1e-4
        )
        assert np.array_equal(saved["colour"], blobs.y[train_rows])
    assert servable.picture("embedding").startswith(b"\x89PNG")
    with pytest.raises(LookupError, match="serves encode"):
        servable.run("predict", fresh)


def test_a_3d_embedding_of_unlabelled_rows(tmp_path: Path, blobs: Dataset) -> None:
    unlabelled = Dataset(x=blobs.x, name="unlabelled")
    params = {"n_components": 3, "compare_sklearn": False, "exaggeration_epochs": 1}
    outcome, _ = fit(tmp_path, unlabelled, params=params, training={"epochs": 2})
    servable = serve("tsne", outcome)
    assert servable.run("encode", blobs.x[:4])["latents"].shape == (4, 3)
    assert "sklearn_trustworthiness" not in outcome.model.evaluation
    assert servable.picture("embedding").startswith(b"\x89PNG")


def test_a_perplexity_not_below_the_rows_fails_with_invalid_data(tmp_path: Path) -> None:
    few = Dataset(x=np.random.default_rng(0).random((40, 5)), name="few")
    with pytest.raises(JobFailed) as info:
        fit(tmp_path, few, params={"perplexity": 36})
    assert info.value.code == "invalid_data"
    message = info.value.message
    assert "perplexity = 36 is not below the 36 rows" in message and "neighbours" in message


def test_the_schema_refuses_bad_params() -> None:
    base = {"kind": "tsne", "dataset": "builtin:digits"}
    for bad in (
        {"params": {"n_components": 4}},
        {"params": {"perplexity": 0.5}},
        {"params": {"early_exaggeration": 0.5}},
        {"params": {"hidden": [0]}},
        {"params": {"exaggeration_epochs": 10}, "training": {"epochs": 10}},
    ):
        with pytest.raises(ValidationError):
            TsneSpec.model_validate({**base, **bad})
    spec = TsneSpec.model_validate({**base, "training": {"epochs": 30}})
    assert spec.training.batch_size == 512 and spec.training.optimizer.learning_rate == 0.003


def test_through_the_api(client: TestClient) -> None:
    too_perplexed = submit(
        client, {"kind": "tsne", "dataset": "builtin:wine", "params": {"perplexity": 170}}
    )
    failed = client.get(f"/v1/jobs/{too_perplexed['id']}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_data"
    assert "not below the 160 rows" in failed["error"]["message"]
    spec = {
        "kind": "tsne",
        "dataset": "builtin:wine",
        "params": {"perplexity": 10, "hidden": [32], "exaggeration_epochs": 1},
        "training": {"epochs": 3, "batch_size": 64},
    }
    job = submit(client, spec)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    model = client.get(f"/v1/models/{done['model_id']}").json()
    assert model["pictures"] == ["embedding"]
    assert {"trustworthiness", "sklearn_trustworthiness"} <= set(model["evaluation"])
    rows = load_builtin("wine").x[:2].tolist()
    latents = client.post(f"/v1/models/{model['id']}/encode", json={"inputs": rows})
    assert latents.status_code == 200 and np.shape(latents.json()["latents"]) == (2, 2)
    picture = client.get(f"/v1/models/{model['id']}/embedding.png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"


@pytest.mark.slow
def test_the_example_keeps_digit_neighbourhoods(tmp_path: Path) -> None:
    spec = {k: v for k, v in TsneSpec.example.items() if k not in ("kind", "dataset", "name")}
    outcome, _ = train("tsne", spec, tmp_path, load_builtin("digits"))
    evaluation = outcome.model.evaluation
    assert evaluation["trustworthiness"] > 0.9
    assert evaluation["trustworthiness_held_out"] > 0.88
    assert evaluation["sklearn_trustworthiness"] - evaluation["trustworthiness"] < 0.1


@pytest.mark.slow
def test_resumes_from_its_checkpoint_after_the_exaggeration(tmp_path: Path, blobs: Dataset) -> None:
    repeatable = {"deterministic": True}
    whole, _ = fit(tmp_path / "whole", blobs, training=repeatable)
    # an attempt that stopped after three epochs left its checkpoint behind ...
    fit(tmp_path / "cut", blobs, training={**repeatable, "epochs": 3})
    # ... and the next one goes on from epoch 3, with the exaggeration already over
    resumed, points = fit(tmp_path / "cut", blobs, training=repeatable)
    assert resumed.result["resumed"] is True
    assert min(points.series("loss")[0]) > 9
    assert set(points.series("exaggeration")[1]) == {1.0}
    assert resumed.result["final_loss"] == pytest.approx(whole.result["final_loss"], rel=1e-5)
