"""Autoencoder and VAE kinds in-process: training, anomaly calibration, serving, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from ml.anomaly.autoencoder import MAX_ENSEMBLE, AutoencoderParams
from ml.anomaly.scoring import prepare
from ml.core.datasets import Dataset, load_builtin
from ml.core.preprocessing import Scaler
from ml.core.registry import get_kind
from ml.core.reporting import JobFailed, MemoryReporter, RunContext, RunOutcome
from ml.core.serving import UnsupportedOperation

FAST = {"epochs": 4, "batch_size": 32, "seed": 0, "telemetry": {"every_steps": 5}}
TELEMETRY = (
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
    "loss",
    "val_loss",
)


def context(tmp: Path, data: Dataset) -> RunContext:
    ctx = RunContext(workdir=tmp / "work", checkpoint_dir=tmp / "ckpt", dataset=data)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def train(
    kind: str, spec: dict[str, Any], tmp: Path, data: Dataset
) -> tuple[RunOutcome, MemoryReporter]:
    k = get_kind(kind)
    reporter = MemoryReporter()
    full = {"kind": kind, "dataset": f"builtin:{data.name}", **spec}
    outcome = k.run(k.spec.model_validate(full), reporter, context(tmp, data))
    return outcome, reporter


def serve(kind: str, outcome: RunOutcome) -> Any:
    model = outcome.model
    assert model is not None
    meta = {
        "input_shape": model.input_shape,
        "preprocessing": model.preprocessing,
        "calibration": model.calibration,
        "capabilities": model.capabilities,
    }
    return get_kind(kind).load(model.files, meta)  # type: ignore[misc]


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    data = load_builtin("breast_cancer")
    assert data.anomaly_label == 1
    return data


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
def test_trains_records_telemetry_and_calibrates(
    kind: str, tmp_path: Path, cancer: Dataset
) -> None:
    outcome, reporter = train(kind, {"training": FAST}, tmp_path, cancer)
    for name in TELEMETRY:
        assert name in reporter.points, name
    _steps, losses = reporter.series("loss")
    assert len(losses) == 4 and losses[-1] < losses[0]
    model = outcome.model
    assert model is not None
    assert model.input_shape == [30]
    assert 0.5 < model.evaluation["roc_auc"] <= 1.0
    assert model.evaluation["evaluation_anomalies"] > 0
    assert model.preprocessing["scale"] == "standard"
    if kind == "vae":
        for name in ("distortion", "rate", "elbo", "bits_per_dim"):
            assert name in reporter.points, name
        _, elbo = reporter.series("elbo")
        _, distortion = reporter.series("distortion")
        _, rate = reporter.series("rate")
        assert elbo[-1] == pytest.approx(-(distortion[-1] + rate[-1]), rel=1e-6)
    servable = serve(kind, outcome)
    rows = cancer.x[:7]
    scored = servable.run("score", rows)
    assert scored["scores"].shape == (7,)
    assert scored["threshold"] == model.calibration["threshold"]
    assert (scored["is_anomaly"] == (scored["scores"] > scored["threshold"])).all()
    latents = servable.run("encode", rows)
    assert latents["latents"].shape == (7, AutoencoderParams().latent_dim)
    assert ("log_variances" in latents) == (kind == "vae")
    recon = servable.run("reconstruct", rows)["reconstructions"]
    assert recon.shape == rows.shape
    # reconstructions come back in raw units, roughly where the data is
    assert abs(float(np.median(recon[:, 0])) - float(np.median(rows[:, 0]))) < 3 * rows[:, 0].std()


def test_threshold_flags_about_the_contamination_share_of_normal_rows(
    tmp_path: Path, cancer: Dataset
) -> None:
    spec = {"params": {"contamination": 0.2}, "training": {**FAST, "validation_split": 0.3}}
    outcome, _ = train("autoencoder", spec, tmp_path, cancer)
    assert outcome.model is not None
    rows = outcome.model.calibration["calibration_rows"]
    # the threshold is the 0.8 quantile of the calibration scores: 20% of them lie above
    assert rows > 50
    fpr = outcome.model.evaluation["false_positive_rate"]
    assert 0.0 < fpr < 0.6


def test_generate_is_seeded_and_autoencoder_does_not_generate(
    tmp_path: Path, cancer: Dataset
) -> None:
    outcome, _ = train("vae", {"training": FAST}, tmp_path / "v", cancer)
    vae = serve("vae", outcome)
    a = vae.run("generate", None, n=5, seed=3)["samples"]
    b = vae.run("generate", None, n=5, seed=3)["samples"]
    assert a.shape == (5, 30) and np.array_equal(a, b)
    assert not np.array_equal(a, vae.run("generate", None, n=5, seed=4)["samples"])
    outcome, _ = train("autoencoder", {"training": {**FAST, "epochs": 1}}, tmp_path / "a", cancer)
    with pytest.raises(UnsupportedOperation, match="serves encode, reconstruct, score"):
        serve("autoencoder", outcome).run("generate", None, n=1)


def test_conv_architecture_on_digit_images(tmp_path: Path) -> None:
    digits = load_builtin("digits")
    spec = {
        "params": {"architecture": "auto", "reconstruction_loss": "binary_crossentropy"},
        "preprocessing": {"scale": "minmax"},
        "training": {**FAST, "epochs": 1},
    }
    outcome, _ = train("autoencoder", spec, tmp_path, digits)
    assert outcome.model is not None and outcome.model.input_shape == [8, 8, 1]
    servable = serve("autoencoder", outcome)
    recon = servable.run("reconstruct", digits.x[:3])["reconstructions"]
    assert recon.shape == (3, 8, 8, 1)
    assert recon.min() >= 0 and recon.max() <= 16 + 1e-4  # sigmoid output, back to 0-16 pixels


def test_bernoulli_needs_minmax(tmp_path: Path, cancer: Dataset) -> None:
    spec = {"params": {"likelihood": "bernoulli"}, "training": FAST}
    with pytest.raises(JobFailed, match="minmax"):
        train("vae", spec, tmp_path, cancer)


def test_divergence_fails_with_the_step(tmp_path: Path, cancer: Dataset) -> None:
    spec = {
        "training": {**FAST, "optimizer": {"name": "sgd", "learning_rate": 10.0, "momentum": 0.9}}
    }
    with pytest.raises(JobFailed) as info:
        train("autoencoder", spec, tmp_path, cancer)
    assert info.value.code == "diverged"
    assert "at step" in info.value.message


@pytest.mark.parametrize("networks", [1, 2])
def test_resumes_from_the_last_checkpoint_without_duplicate_steps(
    networks: int, tmp_path: Path, cancer: Dataset
) -> None:
    config = {**FAST, "deterministic": True}
    params = {"ensemble_size": networks}
    whole, _whole_points = train(
        "autoencoder", {"params": params, "training": config}, tmp_path / "whole", cancer
    )
    # An attempt that stopped after two epochs left its checkpoint behind ...
    _first, first_points = train(
        "autoencoder",
        {"params": params, "training": {**config, "epochs": 2}},
        tmp_path / "part",
        cancer,
    )
    assert (tmp_path / "part" / "ckpt" / "trainer.json").exists()
    # ... and the next attempt, with the full spec, starts from it.
    resumed, points = train(
        "autoencoder", {"params": params, "training": config}, tmp_path / "part", cancer
    )
    assert resumed.result["resumed"] is True
    steps, _ = points.series("loss")
    first_steps, _ = first_points.series("loss")
    assert min(steps) > max(first_steps)  # nothing recorded again
    assert resumed.result["final_loss"] == pytest.approx(whole.result["final_loss"], rel=1e-5)


SEED_EXAMPLE = {
    "kind": "autoencoder",
    "dataset": "builtin:mnist-like",
    "params": {
        "latent_dim": 64,
        "hidden": [],
        "architecture": "dense",
        "reconstruction_loss": "binary_crossentropy",
    },
    "preprocessing": {"scale": "minmax"},
    "training": {
        "epochs": 1,
        "batch_size": 32,
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "schedule": {
            "name": "exponential_decay",
            "decay_steps": 10000,
            "decay_rate": 0.96,
            "staircase": True,
        },
    },
}


def test_the_seed_example_is_a_dense_784_64_784_autoencoder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = Dataset(x=(rng.random((256, 784)) < 0.3).astype(np.float32), name="mnist-like")
    outcome, _ = train(
        "autoencoder",
        {k: v for k, v in SEED_EXAMPLE.items() if k not in ("kind", "dataset")},
        tmp_path,
        data,
    )
    assert outcome.model is not None
    servable = serve("autoencoder", outcome)
    shapes = [w.shape for w in servable.encoder.weights] + [
        w.shape for w in servable.decoder.weights
    ]
    assert shapes == [(784, 64), (64,), (64, 784), (784,)]
    recon = servable.run("reconstruct", data.x[:2])["reconstructions"]
    assert recon.min() >= 0 and recon.max() <= 1  # sigmoid output for cross-entropy


def test_early_stopping_stops_when_val_loss_stalls(tmp_path: Path, cancer: Dataset) -> None:
    spec = {
        "training": {
            **FAST,
            "epochs": 200,
            "optimizer": {"name": "sgd", "learning_rate": 1e-9},
            "early_stopping": {"patience": 2, "min_delta": 1.0},
        }
    }
    outcome, _ = train("autoencoder", spec, tmp_path, cancer)
    assert outcome.result["stopped_early"] is True
    assert outcome.result["epochs"] == 3  # the first epoch sets the best; two more without gain


def test_an_ensemble_serves_the_score_it_was_calibrated_with(
    tmp_path: Path, cancer: Dataset
) -> None:
    spec = {"params": {"ensemble_size": 3, "latent_dim": 2}, "training": FAST}
    outcome, _ = train("autoencoder", spec, tmp_path, cancer)
    model = outcome.model
    assert model is not None
    servable = serve("autoencoder", outcome)
    # The threshold is the 0.95 quantile of the held-out normal rows' scores: served, they give
    # it again, so serving scores with the networks' mean reconstruction as training did.
    k = get_kind("autoencoder")
    full = k.spec.model_validate({"kind": "autoencoder", "dataset": "builtin:x", **spec})
    held_out = prepare(full, context(tmp_path / "again", cancer)).validation
    assert len(held_out) == model.calibration["calibration_rows"]
    raw = Scaler.from_dict(model.preprocessing).inverse_transform(held_out)
    scores = servable.run("score", raw)["scores"]
    assert np.quantile(scores, 0.95) == pytest.approx(model.calibration["threshold"], rel=1e-4)
    # Three networks, each from initial weights of its own: their latents side by side differ.
    latents = servable.run("encode", cancer.x[:7])["latents"]
    assert latents.shape == (7, 3 * 2)
    assert not np.allclose(latents[:, 0:2], latents[:, 2:4])
    assert not np.allclose(latents[:, 2:4], latents[:, 4:6])
    assert servable.run("reconstruct", cancer.x[:7])["reconstructions"].shape == (7, 30)


@pytest.mark.parametrize(
    ("kind", "size"),
    [("autoencoder", 0), ("autoencoder", MAX_ENSEMBLE + 1), ("autoencoder", 2.5), ("vae", 2)],
)
def test_ensemble_size_out_of_bounds_is_refused(kind: str, size: Any) -> None:
    body = {"kind": kind, "dataset": "builtin:breast_cancer", "params": {"ensemble_size": size}}
    with pytest.raises(ValidationError, match="ensemble_size"):
        get_kind(kind).spec.model_validate(body)
