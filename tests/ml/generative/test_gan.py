"""The `gan` kind in-process: both players' metrics for each objective, each epoch's sample
quality and the best epoch kept, early stopping on it, generate in data units, the DCGAN for
images, the samples picture, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.core.datasets import Dataset
from ml.core.reporting import MemoryReporter, RunOutcome
from ml.generative.gan import DEFAULT_LEARNING_RATE, GanParams
from tests.ml.anomaly.test_autoencoder import serve, train
from tests.ml.generative.test_diffusion import subset

SMALL = {"latent_dim": 8, "generator_hidden": [32, 32], "discriminator_hidden": [32, 32]}
FAST = {
    "epochs": 2,
    "batch_size": 64,
    "seed": 0,
    "telemetry": {"every_steps": 4, "microbatches": 2},  # a smaller graph to trace
}
PLAYER_TELEMETRY = (
    "internal_energy",
    "lr",
    "grad_noise_scale",
    "temperature_nominal",
    "temperature_noise",
    "temperature_virial",
    "fdr_ratio",
    "weight_entropy",
    "free_energy",
    "heat",
    "entropy_production",
    "entropy_production_excess",
)
GAN_METRICS = ("d_loss", "g_loss", "d_real_accuracy", "d_fake_accuracy", "jsd_lower_bound")


@pytest.fixture(scope="module")
def swiss() -> Dataset:
    return subset("swiss_roll", 1200)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, swiss: Dataset
) -> tuple[RunOutcome, MemoryReporter]:
    params = {**SMALL, "loss": "non_saturating", "d_steps": 2, "label_smoothing": 0.1}
    spec = {"params": params, "training": FAST}
    return train("gan", spec, tmp_path_factory.mktemp("g"), swiss)


def test_a_tiny_gan_records_every_metric_name(trained: tuple[RunOutcome, MemoryReporter]) -> None:
    outcome, reporter = trained
    for name in GAN_METRICS:
        assert name in reporter.points, name
    for player in ("d_", "g_"):
        for name in PLAYER_TELEMETRY:
            assert player + name in reporter.points, player + name
    steps, jsd = reporter.series("jsd_lower_bound")
    assert steps == reporter.series("d_loss")[0] == reporter.series("g_loss")[0]
    assert all(value <= math.log(2) for value in jsd)  # L_D ≥ 0
    for name in ("d_real_accuracy", "d_fake_accuracy"):
        assert all(0 <= v <= 1 for v in reporter.series(name)[1])
    # 840 training rows, 13 batches of 64, two discriminator steps per generator step: 6 an epoch
    assert outcome.result["iterations"] == 12
    model = outcome.model
    assert model is not None and model.capabilities == ["generate"]
    assert model.pictures == ["samples"] and model.calibration["tanh_minmax"] is True
    for name in ("energy_distance", "energy_distance_floor", "mmd", "mmd_floor"):
        assert model.evaluation[name] >= 0, name


def test_generate_is_seeded_and_within_the_data_range(
    trained: tuple[RunOutcome, MemoryReporter], swiss: Dataset
) -> None:
    model = serve("gan", trained[0])
    a = model.run("generate", None, n=300, seed=7)["samples"]
    assert a.shape == (300, 2)
    assert np.array_equal(a, model.run("generate", None, n=300, seed=7)["samples"])
    assert not np.array_equal(a, model.run("generate", None, n=300, seed=8)["samples"])
    # tanh on minmax-scaled data: samples stay inside the training rows' range, in raw units
    assert (a >= swiss.x.min(axis=0) - 1e-5).all() and (a <= swiss.x.max(axis=0) + 1e-5).all()
    with pytest.raises(ValueError, match="a gan takes no sampler or steps"):
        model.run("generate", None, n=2, sampler="ddim", steps=3)
    assert model.picture("samples").startswith(b"\x89PNG")


def test_the_default_networks() -> None:
    from ml.generative.gan_model import Players
    from ml.generative.gan_networks import SpectralDense

    players = Players(GanParams(), (2,), tanh=True)
    kinds = {type(layer).__name__ for layer in players.generator.layers}
    assert "BatchNormalization" not in kinds
    dense = [layer for layer in players.discriminator.layers if hasattr(layer, "units")]
    assert [layer.units for layer in dense] == [256, 256, 1]
    assert not any(isinstance(layer, SpectralDense) for layer in dense)
    hinge = Players(GanParams(loss="hinge"), (2,), tanh=True).discriminator.layers
    dense = [layer for layer in hinge if hasattr(layer, "units")]
    assert all(isinstance(layer, SpectralDense) for layer in dense)  # hinge: spectral norm


def _kept_and_stopped(reporter: MemoryReporter, metric: str, patience: int | None) -> tuple:
    """The epoch a run should keep (the best of `val_<metric>`) and, with early stopping, the
    epoch it should stop after, from the points it recorded."""
    values = reporter.series(f"val_{metric}")[1]
    best, bad, stop = math.inf, 0, None
    for epoch, value in enumerate(values, start=1):
        bad = 0 if value < best else bad + 1
        best = min(best, value)
        if patience is not None and bad >= patience and stop is None:
            stop = epoch
    return int(np.argmin(values)) + 1, stop


def test_each_epochs_quality_the_best_epoch_kept_and_early_stopping(
    tmp_path: Path, swiss: Dataset
) -> None:
    training = {**FAST, "epochs": 6, "early_stopping": {"patience": 1}}
    outcome, reporter = train("gan", {"params": SMALL, "training": training}, tmp_path, swiss)
    values = reporter.series("val_energy_distance")[1]
    floors = reporter.series("val_energy_distance_floor")[1]
    assert len(values) == outcome.result["epochs"] and all(v >= 0 for v in values)
    assert len(set(floors)) == 1 and floors[0] > 0  # real rows against real rows, once
    kept, stop = _kept_and_stopped(reporter, "energy_distance", patience=1)
    assert outcome.result["kept_epoch"] == kept
    assert outcome.result["stopped_early"] is (stop is not None and stop < 6)
    assert outcome.result["epochs"] == (stop or 6)


def test_wgan_gp_with_r1_logs_its_wasserstein_estimate(tmp_path: Path, swiss: Dataset) -> None:
    params = {**SMALL, "loss": "wgan_gp", "d_learning_rate": 4e-4}  # r1 1.0 by default
    outcome, reporter = train("gan", {"params": params, "training": FAST}, tmp_path, swiss)
    for name in ("wasserstein_estimate", "d_gradient_penalty", "d_r1_penalty", "jsd_lower_bound"):
        assert name in reporter.points, name
    for player in ("d_", "g_"):
        for name in PLAYER_TELEMETRY:
            assert player + name in reporter.points, player + name
    assert all(v >= 0 for v in reporter.series("d_gradient_penalty")[1])
    assert outcome.result["iterations"] == 2 * (13 // 5)  # d_steps 5 by default for wgan_gp
    assert reporter.series("d_lr")[1][0] == pytest.approx(4e-4)
    assert reporter.series("g_lr")[1][0] == pytest.approx(DEFAULT_LEARNING_RATE)


def test_a_dcgan_on_digit_images(tmp_path: Path) -> None:
    digits = subset("digits", 300)
    training = {"epochs": 2, "batch_size": 32, "telemetry": FAST["telemetry"]}
    outcome, points = train("gan", {"training": training}, tmp_path, digits)
    assert outcome.model is not None and outcome.model.input_shape == [8, 8, 1]
    ev = outcome.model.evaluation
    for name in ("frechet_distance", "frechet_distance_floor", "classifier_confidence"):
        assert name in ev, name
    kept, _ = _kept_and_stopped(points, "frechet_distance", None)
    assert outcome.result["kept_epoch"] == kept
    samples = serve("gan", outcome).run("generate", None, n=4, seed=0)["samples"]
    assert samples.shape == (4, 8, 8, 1)
    assert samples.min() >= -1e-4 and samples.max() <= 16 + 1e-4  # pixel units, 0-16


def test_resumes_both_players_and_standard_scaling_gives_a_linear_output(
    tmp_path: Path, swiss: Dataset
) -> None:
    spec: dict[str, Any] = {
        "params": SMALL,
        "preprocessing": {"scale": "standard"},
        "training": {**FAST, "epochs": 1},
    }
    _, first = train("gan", spec, tmp_path, swiss)
    spec["training"]["epochs"] = 2
    resumed, points = train("gan", spec, tmp_path, swiss)
    assert resumed.result["resumed"] is True and resumed.result["iterations"] == 26
    assert min(points.series("d_loss")[0]) > max(first.series("d_loss")[0])
    assert resumed.model is not None and resumed.model.calibration["tanh_minmax"] is False


@pytest.mark.parametrize(
    "params", [{"preset": {}}, {"preset": ["seed"]}, {"loss": {}}, {"preset": "seed", "loss": []}]
)
def test_a_preset_or_loss_that_is_not_a_name_is_a_422_not_a_500(params: dict[str, Any]) -> None:
    from ml.generative.gan import GanSpec

    with pytest.raises(ValueError, match="validation error"):
        GanSpec.model_validate({"kind": "gan", "dataset": "builtin:moons", "params": params})


def test_the_auto_interval_measures_every_iteration_of_a_short_job(
    tmp_path: Path, swiss: Dataset
) -> None:
    params = {**SMALL, "d_steps": 2}
    training = {**FAST, "telemetry": {"microbatches": 2}}  # every_steps: "auto"
    outcome, reporter = train("gan", {"params": params, "training": training}, tmp_path, swiss)
    assert outcome.result["iterations"] == 12
    for player in ("d_", "g_"):
        assert len(reporter.series(player + "internal_energy")[0]) == 12, player
