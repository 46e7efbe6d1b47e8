"""The `annealing` kind: phase transitions against 2 λ_max(C_{x|y}), the free-energy identity
F* = D + T·I, predict at the final temperature, seeds and bad data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.special import logsumexp

from ml.clustering import deterministic_annealing as annealing
from ml.clustering.annealing import AnnealingSpec
from ml.core.datasets import Dataset
from ml.core.preprocessing import Scaler
from ml.core.reporting import JobFailed
from tests.ml.anomaly.test_autoencoder import serve, train

CENTRES = np.array([[-6.0, 0.0], [0.0, 0.0], [6.0, 1.0], [0.0, 8.0]])
COOLING = 0.9


@pytest.fixture(scope="module")
def blobs() -> Dataset:
    """Four well-separated Gaussian blobs (std 0.5) in 2-D."""
    rng = np.random.default_rng(0)
    x = np.concatenate([c + 0.5 * rng.standard_normal((150, 2)) for c in CENTRES])
    return Dataset(x=x, y=np.repeat(np.arange(4), 150), name="blobs", label_type="class")


def first_critical_temperature(data: Dataset) -> float:
    x = Scaler("standard").fit(data.x).transform(data.x)
    return float(2 * np.linalg.eigvalsh(np.cov(x.T, bias=True)).max())


def anneal(tmp: Path, data: Dataset, **params: Any) -> tuple[Any, Any]:
    return train("annealing", {"params": {"max_clusters": 4, **params}}, tmp, data)


@pytest.mark.parametrize("start", [None, 4.0, 1.3])
def test_the_first_split_is_within_one_cooling_step_below_2_lambda_max(
    tmp_path: Path, blobs: Dataset, start: float | None
) -> None:
    t_c = first_critical_temperature(blobs)
    t_start = None if start is None else start * t_c
    outcome, reporter = anneal(tmp_path, blobs, t_start=t_start, cooling_rate=COOLING)
    transitions = outcome.model.evaluation["phase_transitions"]
    first = transitions[0]
    assert first["predicted_critical_temperature"] == pytest.approx(t_c, rel=1e-5)
    assert COOLING * t_c <= first["temperature"] < t_c
    assert first["n_clusters_after"] == 2
    # no cluster ever splits above its predicted critical temperature
    for t in transitions:
        assert t["temperature"] < t["predicted_critical_temperature"]
    assert [t["n_clusters_after"] for t in transitions][-1] == 4
    # the metric history says the same: one cluster above T_c, two right below it
    _, temperatures = reporter.series("temperature")
    _, counts = reporter.series("n_clusters")
    above = [c for t, c in zip(temperatures, counts, strict=True) if t >= t_c]
    assert above and set(above) == {1}
    assert counts[len(above)] == 2
    if start is None:
        assert temperatures[0] == pytest.approx(1.05 * t_c)


def test_free_energy_is_distortion_plus_temperature_times_information(
    tmp_path: Path, blobs: Dataset
) -> None:
    outcome, reporter = anneal(tmp_path, blobs)
    series = {
        name: np.array(reporter.series(name)[1])
        for name in (
            "temperature",
            "distortion",
            "entropy",
            "mutual_information",
            "free_energy",
            "n_clusters",
        )
    }
    t, d, info, f = (
        series[n] for n in ("temperature", "distortion", "mutual_information", "free_energy")
    )
    np.testing.assert_allclose(f, d + t * info, rtol=1e-7, atol=1e-10)
    assert (np.diff(t) < 0).all()
    assert (series["entropy"] >= -1e-12).all() and (info >= -1e-12).all()
    # I(X;Y) ≤ ln K, and H(Y|X) → 0 as T → 0 (hard assignments)
    assert (info <= np.log(series["n_clusters"]) + 1e-9).all()
    assert series["entropy"][-1] < 1e-3
    # heat capacity is the finite difference of D over T, and peaks around a transition
    steps, heat = reporter.series("heat_capacity")
    expected = np.diff(d) / np.diff(t)
    np.testing.assert_allclose(heat, expected, rtol=1e-9)
    peak = steps[int(np.argmax(heat))]
    split_steps = [
        s for s in range(1, len(t)) if series["n_clusters"][s] > series["n_clusters"][s - 1]
    ]
    assert min(abs(peak - s) for s in split_steps) <= 2
    # and F* of the saved model, recomputed from scratch: −T mean_x ln Σ_y p(y) e^{−d/T}
    files, model = outcome.model.files, outcome.model
    with np.load(files["centroids"]) as saved:
        y, log_p, temperature = (
            saved["centroids"],
            saved["log_weights"],
            float(saved["temperature"]),
        )
    x = Scaler.from_dict(model.preprocessing).transform(blobs.x)
    dist = ((x[:, None, :] - y[None].astype(np.float64)) ** 2).sum(axis=2)
    free = -temperature * logsumexp(log_p[None, :] - dist / temperature, axis=1).mean()
    assert temperature == t[-1]
    assert free == pytest.approx(f[-1], rel=1e-4)


def test_predict_gives_probabilities_at_the_final_temperature(
    tmp_path: Path, blobs: Dataset
) -> None:
    outcome, _ = anneal(tmp_path, blobs, t_min=0.05)
    model = outcome.model
    assert model.evaluation["ari"] > 0.99 and model.evaluation["nmi"] > 0.98
    assert outcome.result["ari"] == model.evaluation["ari"]
    assert model.evaluation["final_temperature"] >= 0.05
    answer = serve("annealing", outcome).run("predict", blobs.x[::50])
    assert set(answer) == {"clusters", "probabilities", "distances"}
    probabilities = answer["probabilities"]
    assert probabilities.shape == (12, 4) and answer["clusters"].shape == (12,)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (answer["clusters"] == probabilities.argmax(axis=1)).all()
    # the Gibbs law of the final temperature, computed in float64 from the NumPy maths
    book = annealing.Codebook(
        np.load(model.files["centroids"])["centroids"].astype(np.float64),
        np.exp(np.load(model.files["centroids"])["log_weights"].astype(np.float64)),
    )
    x = Scaler.from_dict(model.preprocessing).transform(blobs.x[::50])
    expected = annealing.assignments(x, book, model.evaluation["final_temperature"])
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    # well inside a blob, the assignment is certain
    assert probabilities.max(axis=1).min() > 0.99


def test_the_same_seed_gives_the_same_anneal(tmp_path: Path, blobs: Dataset) -> None:
    first, a = anneal(tmp_path / "a", blobs, seed=3)
    second, b = anneal(tmp_path / "b", blobs, seed=3)
    assert first.result == second.result
    assert a.points == b.points


def test_max_clusters_bounds_the_codebook(tmp_path: Path, blobs: Dataset) -> None:
    outcome, reporter = anneal(tmp_path, blobs, max_clusters=2)
    assert max(reporter.series("n_clusters")[1]) == 2
    assert outcome.result["n_clusters"] == 2
    assert outcome.model.input_shape == [2]


def test_bad_data_fails_with_invalid_data(tmp_path: Path) -> None:
    few = Dataset(x=np.arange(6.0).reshape(3, 2), name="three")
    with pytest.raises(JobFailed) as info:
        anneal(tmp_path, few)
    assert info.value.code == "invalid_data" and "max_clusters = 4" in info.value.message
    same = Dataset(x=np.ones((50, 3)), name="constant")
    with pytest.raises(JobFailed) as info:
        anneal(tmp_path, same)
    assert info.value.code == "invalid_data" and "only 1 distinct rows" in info.value.message
    # one cluster of identical rows is a degenerate but valid anneal
    outcome, _ = anneal(tmp_path, same, max_clusters=1)
    assert outcome.result["n_clusters"] == 1 and outcome.model.evaluation["phase_transitions"] == []
    # a schedule that would take forever, known only once the data's T_c is
    with pytest.raises(JobFailed) as info:
        anneal(tmp_path, Dataset(x=np.eye(4), name="eye"), t_min=1e-300, cooling_rate=0.99)
    assert info.value.code == "invalid_data" and "temperatures" in info.value.message


def test_the_schema_refuses_inconsistent_temperatures() -> None:
    base = {"kind": "annealing", "dataset": "builtin:eight_gaussians"}
    with pytest.raises(ValidationError, match="above t_start"):
        AnnealingSpec.model_validate({**base, "params": {"t_start": 1.0, "t_min": 2.0}})
    for bad in ({"cooling_rate": 1.0}, {"max_clusters": 0}, {"t_min": 0}):
        with pytest.raises(ValidationError):
            AnnealingSpec.model_validate({**base, "params": bad})
