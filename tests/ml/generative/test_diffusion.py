"""The `diffusion` kind in-process: training metrics, the entropy production it stores,
generate (ddpm / ddim, seeded, in data units), score, the samples picture, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.core.datasets import Dataset, load_builtin
from ml.core.reporting import MemoryReporter, RunOutcome
from tests.ml.anomaly.test_autoencoder import serve, train

TINY = {"timesteps": 40, "schedule": "sohl_dickstein", "hidden": [32, 32], "bound_timesteps": 100}
FAST = {
    "epochs": 3,
    "batch_size": 64,
    "seed": 0,
    "telemetry": {"every_steps": 5, "microbatches": 2},  # a smaller graph to trace
}
TELEMETRY = ("internal_energy", "lr", "grad_noise_scale", "temperature_virial", "heat")


def subset(name: str, rows: int) -> Dataset:
    data = load_builtin(name)
    keep = np.random.default_rng(0).permutation(len(data.x))[:rows]
    return Dataset(x=data.x[keep], y=data.y[keep], name=data.name, label_type=data.label_type)


@pytest.fixture(scope="module")
def swiss() -> Dataset:
    return subset("swiss_roll", 1500)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, swiss: Dataset
) -> tuple[RunOutcome, MemoryReporter]:
    return train(
        "diffusion", {"params": TINY, "training": FAST}, tmp_path_factory.mktemp("d"), swiss
    )


def test_records_the_diffusion_metrics_and_telemetry(
    trained: tuple[RunOutcome, MemoryReporter],
) -> None:
    outcome, reporter = trained
    for name in (*TELEMETRY, "loss", "val_loss", "loss_simple", "nll_bound_bits_per_dim"):
        assert name in reporter.points, name
    _steps, bound = reporter.series("nll_bound_bits_per_dim")
    assert len(bound) == 3 and all(math.isfinite(b) for b in bound)  # one per epoch
    t, sigma = reporter.series("forward_entropy_production")
    assert t == list(range(1, 41))  # indexed by the chain's step t
    model = outcome.model
    assert model is not None
    assert model.capabilities == ["generate", "score"] and model.pictures == ["samples"]
    ev = model.evaluation
    for name in ("energy_distance", "energy_distance_floor", "mmd", "mmd_floor"):
        assert ev[name] >= 0, name
    assert ev["entropy_production_per_step"] == pytest.approx(sigma)
    assert ev["entropy_production_total"] == pytest.approx(sum(sigma))
    assert math.isfinite(ev["entropy_production_model_lower_bound"])
    assert model.calibration["schedule"] == "sohl_dickstein"
    assert outcome.result["nll_bound_bits_per_dim"] == pytest.approx(ev["nll_bound_bits_per_dim"])


def test_stored_entropy_production_is_the_closed_form(tmp_path: Path) -> None:
    """Data with mean 0 and variance 4 on the DDPM linear chain: Σσ_t = ½(3 − ln 4)."""
    z = np.random.default_rng(0).standard_normal((256, 1))
    x = (2 * (z - z.mean()) / z.std()).astype(np.float32)
    spec = {
        "params": {"hidden": [8], "evaluation_split": 0.0, "bound_timesteps": 5},
        "preprocessing": {"scale": "none"},
        "training": {"epochs": 1, "batch_size": 64, "validation_split": 0.0},
    }
    outcome, reporter = train("diffusion", spec, tmp_path, Dataset(x=x, name="gauss"))
    _, sigma = reporter.series("forward_entropy_production")
    assert len(sigma) == 1000 and min(sigma) >= 0
    assert sum(sigma) == pytest.approx(0.806853, abs=1e-6)
    assert outcome.model is not None and outcome.model.evaluation.get("energy_distance") is None


def test_generate_is_seeded_and_in_data_units(
    trained: tuple[RunOutcome, MemoryReporter], swiss: Dataset
) -> None:
    model = serve("diffusion", trained[0])
    for options in ({}, {"sampler": "ddim"}, {"sampler": "ddpm", "steps": 10}):
        a = model.run("generate", None, n=50, seed=3, **options)["samples"]
        b = model.run("generate", None, n=50, seed=3, **options)["samples"]
        assert a.shape == (50, 2) and np.array_equal(a, b), options
        assert not np.array_equal(
            a, model.run("generate", None, n=50, seed=4, **options)["samples"]
        )
    samples = model.run("generate", None, n=400, seed=0)["samples"]
    real = swiss.x
    # the data's own units: where the raw swiss roll is, not the scaled (zero-mean, unit) one
    assert (
        np.abs(np.median(samples, axis=0) - np.median(real, axis=0)).max() < real.std(axis=0).max()
    )
    # (a robust spread: a 3-epoch model on the 2015 chain throws the odd far sample)
    spread = np.subtract(*np.percentile(samples, [75, 25], axis=0))
    real_spread = np.subtract(*np.percentile(real, [75, 25], axis=0))
    assert (spread / real_spread > 0.3).all() and (spread / real_spread < 3).all()


def test_ddim_is_deterministic_given_the_seed_and_steps_beyond_the_chain_are_refused(
    trained: tuple[RunOutcome, MemoryReporter],
) -> None:
    model = serve("diffusion", trained[0])
    few = model.run("generate", None, n=8, seed=1, sampler="ddim", steps=10)["samples"]
    assert np.array_equal(
        few, model.run("generate", None, n=8, seed=1, sampler="ddim", steps=10)["samples"]
    )
    with pytest.raises(ValueError, match="between 1 and the chain's 40 timesteps"):
        model.run("generate", None, n=2, seed=1, sampler="ddim", steps=41)
    with pytest.raises(ValueError, match="unknown sampler"):
        model.run("generate", None, n=2, sampler="langevin")


def test_score_is_the_bound_per_row_with_a_calibrated_threshold(
    trained: tuple[RunOutcome, MemoryReporter], swiss: Dataset
) -> None:
    outcome = trained[0]
    assert outcome.model is not None
    model = serve("diffusion", outcome)
    rows = swiss.x[:20]
    scored = model.run("score", rows)
    assert scored["scores"].shape == (20,)
    assert scored["threshold"] == outcome.model.calibration["threshold"]
    assert (scored["is_anomaly"] == (scored["scores"] > scored["threshold"])).all()
    # a row's score does not depend on the rows sent with it
    alone = model.run("score", rows[[5, 3]])["scores"]
    np.testing.assert_allclose(alone, scored["scores"][[5, 3]], rtol=1e-6)
    far = model.run("score", rows + 5 * swiss.x.std(axis=0))["scores"]
    assert np.median(far) > np.median(scored["scores"])


def test_samples_picture_is_a_png(trained: tuple[RunOutcome, MemoryReporter]) -> None:
    picture = serve("diffusion", trained[0]).picture("samples")
    assert picture.startswith(b"\x89PNG")


def test_a_u_net_on_digit_images(tmp_path: Path) -> None:
    digits = subset("digits", 300)
    spec = {
        "params": {"timesteps": 20, "schedule": "cosine", "hidden": [8, 16]},
        "training": {"epochs": 1, "batch_size": 32},
    }
    outcome, _ = train("diffusion", spec, tmp_path, digits)
    assert outcome.model is not None and outcome.model.input_shape == [8, 8, 1]
    ev = outcome.model.evaluation
    for name in ("frechet_distance", "frechet_distance_floor", "classifier_confidence"):
        assert name in ev, name
    model = serve("diffusion", outcome)
    assert model.run("generate", None, n=3, seed=0)["samples"].shape == (3, 8, 8, 1)
    assert model.picture("samples").startswith(b"\x89PNG")


@pytest.mark.slow
def test_resumes_from_its_checkpoint(tmp_path: Path, swiss: Dataset) -> None:
    spec: dict[str, Any] = {"params": TINY, "training": {**FAST, "epochs": 1}}
    _, first = train("diffusion", spec, tmp_path, swiss)
    spec["training"]["epochs"] = 2
    resumed, points = train("diffusion", spec, tmp_path, swiss)
    assert resumed.result["resumed"] is True
    assert min(points.series("loss")[0]) > max(first.series("loss")[0])
