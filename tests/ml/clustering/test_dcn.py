"""The `dcn` kind: pre-training, latent k-means, joint network / centroid updates through the
shared trainer (with its telemetry), encode / predict, seeds, resuming, and bad data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from ml.clustering.dcn import DcnSpec
from ml.core.datasets import Dataset, load_builtin
from ml.core.reporting import JobFailed
from tests.ml.anomaly.test_autoencoder import TELEMETRY, serve, train
from tests.ml.clustering.deep_setup import FAST, four_blobs
from tests.ml.clustering.deep_setup import PARAMS as COMMON
from tests.ml.clustering.deep_setup import fit as fit_kind

PARAMS = {**COMMON, "clustering_weight": 0.5, "n_init": 3}


@pytest.fixture(scope="module")
def blobs() -> Dataset:
    return four_blobs()


def fit(tmp: Path, data: Dataset, **overrides: Any) -> tuple[Any, Any]:
    return fit_kind("dcn", PARAMS, tmp, data, **overrides)


@pytest.fixture(scope="module")
def trained(blobs: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    return fit(tmp_path_factory.mktemp("dcn"), blobs)


def test_trains_jointly_with_telemetry_and_serves(trained: tuple[Any, Any], blobs: Dataset) -> None:
    outcome, reporter = trained
    for name in TELEMETRY[:-1]:  # every one but val_loss: all rows are clustered
        assert name in reporter.points, name  # the joint phase's, from the shared trainer
        assert f"pretrain_{name}" in reporter.points, name
    for name in ("reconstruction", "clustering"):  # the two terms of the loss, per window
        assert name in reporter.points, name
    steps, kmeans_loss = reporter.series("kmeans_loss")
    assert steps[0] == 0 and len(steps) == 1 + FAST["epochs"]  # k-means start, then each epoch
    assert all(v >= 0 and np.isfinite(v) for v in kmeans_loss)
    assert kmeans_loss[-1] < kmeans_loss[0]  # the latent space becomes k-means friendlier
    _, changed = reporter.series("changed_fraction")
    assert len(changed) == FAST["epochs"] and all(0 <= c <= 1 for c in changed)
    assert reporter.fractions == sorted(reporter.fractions) and reporter.fractions[-1] == 1.0
    model = outcome.model
    assert model is not None and model.capabilities == ["encode", "predict"]
    evaluation = model.evaluation
    assert {"ari", "nmi", "initial_ari", "initial_nmi", "kmeans_loss"} <= set(evaluation)
    assert -1 <= evaluation["ari"] <= 1 and 0 <= evaluation["nmi"] <= 1
    _, ari = reporter.series("ari")
    assert ari[0] == evaluation["initial_ari"] and ari[-1] == evaluation["ari"]
    assert model.calibration["variance"] > 0
    servable = serve("dcn", outcome)
    rows = blobs.x[::40]
    assert servable.run("encode", rows)["latents"].shape == (10, 3)
    answer = servable.run("predict", rows)
    assert set(answer) == {"clusters", "probabilities", "distances"}
    p, d = answer["probabilities"], answer["distances"]
    assert p.shape == (10, 4) and d.shape == (10, 4) and answer["clusters"].shape == (10,)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert (answer["clusters"] == p.argmax(axis=1)).all()
    assert (answer["clusters"] == d.argmin(axis=1)).all()
    # probabilities are the softmax of −d / 2σ², σ² the calibrated latent variance
    logits = -d / (2 * model.calibration["variance"])
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, expected / expected.sum(axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(LookupError, match="serves encode, predict"):
        servable.run("score", rows)


def test_centroid_updates_are_the_papers_count_weighted_steps() -> None:
    """Applied to an epoch's rows at once, m_k ← m_k − (1/c_k)(m_k − z_i), c_k ← c_k + 1 per row
    is the running mean (c_k m_k + Σ z_i) / (c_k + n_k)."""
    import tensorflow as tf

    from ml.clustering.dcn_tf import Clusters
    from ml.core.reporting import MemoryReporter

    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 2)).astype(np.float32)
    centres = np.array([[-1.0, 0.0], [1.0, 0.0], [9.0, 9.0]], dtype=np.float32)

    class Fixed:  # an objective whose network is frozen: latents are z
        def __init__(self) -> None:
            self.centres = tf.Variable(centres)

        def latents(self, x: np.ndarray) -> np.ndarray:
            return z

    reporter = MemoryReporter()
    state = Clusters(Fixed(), z, None, reporter)  # type: ignore[arg-type]
    state.counts = np.array([5.0, 3.0, 2.0])
    state.labels = np.zeros(50, dtype=np.int64)
    changed = state.update(step=7)
    nearest = ((z[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    expected, counts = centres.astype(np.float64).copy(), np.array([5.0, 3.0, 2.0])
    for row, k in zip(z, nearest, strict=True):  # the paper's per-row rule
        counts[k] += 1
        expected[k] -= (expected[k] - row) / counts[k]
    np.testing.assert_allclose(state.objective.centres.numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(state.counts, counts)
    assert counts[2] == 2.0  # a centroid no row chose stays where it is
    assert changed == pytest.approx(np.mean(nearest != 0))
    assert set(reporter.points) == {"kmeans_loss", "changed_fraction"}
    assert list(reporter.points["kmeans_loss"]) == [7]


def test_a_centroid_update_counts_the_rows_trained_since_the_last() -> None:
    """Updating every half epoch, all rows stand in for the half trained: the counts grow by
    n_k / 2 and the step is m_k ← (c_k m_k + Σ z_i / 2) / (c_k + n_k / 2)."""
    import tensorflow as tf

    from ml.clustering.dcn_tf import Clusters
    from ml.clustering.deep import epoch_share
    from ml.core.reporting import MemoryReporter

    assert epoch_share(26, 13) == pytest.approx(2.0)  # 13 steps an epoch
    z = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]], dtype=np.float32)

    class Fixed:  # an objective whose network is frozen: latents are z
        centres = tf.Variable(np.array([[1.0, 1.0], [9.0, 9.0]], dtype=np.float32))

        def latents(self, x: np.ndarray) -> np.ndarray:
            return z

    state = Clusters(Fixed(), z, None, MemoryReporter(), share=epoch_share(5, 10))
    assert state.share == pytest.approx(0.5)  # 10 steps an epoch at batch size 40
    state.counts, state.labels = np.array([3.0, 1.0]), np.array([0, 0, 1])
    assert state.update(step=13) == 0.0
    np.testing.assert_allclose(state.counts, [4.0, 1.5])
    expected = [[(3.0 + 1.0) / 4.0, 3.0 / 4.0], [(9.0 + 5.0) / 1.5, (9.0 + 5.0) / 1.5]]
    np.testing.assert_allclose(state.objective.centres.numpy(), expected, rtol=1e-6)


def test_the_same_seed_gives_the_same_model(
    tmp_path: Path, blobs: Dataset, trained: tuple[Any, Any]
) -> None:
    first, first_points = trained
    second, second_points = fit(tmp_path, blobs)
    assert first.result == second.result
    assert first_points.series("kmeans_loss") == second_points.series("kmeans_loss")
    a = serve("dcn", first).run("predict", blobs.x)["probabilities"]
    b = serve("dcn", second).run("predict", blobs.x)["probabilities"]
    np.testing.assert_array_equal(a, b)


def test_updates_stop_once_assignments_settle(tmp_path: Path, blobs: Dataset) -> None:
    outcome, reporter = fit(tmp_path, blobs, params={"tol": 0.5})
    assert outcome.result["converged"] is True
    assert len(reporter.series("kmeans_loss")[0]) == 2
    assert len(reporter.series("loss")[1]) == 1


@pytest.mark.slow
def test_resumes_the_joint_phase_from_its_checkpoint(
    tmp_path: Path, blobs: Dataset, trained: tuple[Any, Any]
) -> None:
    whole, _ = trained
    fit(tmp_path, blobs, training={**FAST, "epochs": 2})
    assert (tmp_path / "ckpt" / "joint" / "trainer.json").exists()
    resumed, points = fit(tmp_path, blobs)
    assert resumed.result["resumed"] is True
    assert not any(name.startswith("pretrain_") for name in points.points)
    assert min(points.series("kmeans_loss")[0]) > 0
    assert resumed.result["kmeans_loss"] == pytest.approx(whole.result["kmeans_loss"], rel=1e-5)
    assert resumed.result["ari"] == whole.result["ari"]


def test_bad_data_fails_with_invalid_data(tmp_path: Path) -> None:
    few = Dataset(x=np.random.default_rng(0).random((3, 4)), name="three")
    with pytest.raises(JobFailed) as info:
        fit(tmp_path, few)
    assert info.value.code == "invalid_data" and "n_clusters = 4" in info.value.message


def test_the_schema_refuses_bad_params() -> None:
    base = {"kind": "dcn", "dataset": "builtin:digits"}
    for bad in ({"n_clusters": 0}, {"clustering_weight": -1}, {"hidden": [0]}, {"latent_dim": 0}):
        with pytest.raises(ValidationError):
            DcnSpec.model_validate({**base, "params": bad})


@pytest.mark.slow
def test_the_example_improves_on_latent_k_means_for_digits(tmp_path: Path) -> None:
    spec = {k: v for k, v in DcnSpec.example.items() if k not in ("kind", "dataset", "name")}
    outcome, _ = train("dcn", spec, tmp_path, load_builtin("digits"))
    evaluation = outcome.model.evaluation
    assert evaluation["ari"] > evaluation["initial_ari"]
    assert evaluation["ari"] > 0.5
