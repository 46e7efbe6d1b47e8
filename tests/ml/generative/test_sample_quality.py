"""Sample-quality metrics (ml.generative.sample_quality) on distributions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from ml.generative import sample_quality as sq

REPLICATES, N = 10, 400


def _within(values: list[float], expected: float) -> None:
    """The mean of independent replicates agrees with `expected` within 5 standard errors."""
    se = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    assert abs(float(np.mean(values)) - expected) < 5 * se + 1e-12, (np.mean(values), expected)


def gaussian_energy_distance(mu: float) -> float:
    """E(N(0,1), N(μ,1)) = 2 E|X − Y| − E|X − X'| − E|Y − Y'|, X − Y ~ N(−μ, 2)."""
    s = math.sqrt(2.0)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / 4) + mu * (1 - 2 * norm.cdf(-mu / s))
    return 2 * e_xy - 2 * (2 / math.sqrt(math.pi))


def gaussian_mmd2(mu: float, h: float) -> tuple[float, float]:
    """MMD² between N(0,1) and N(μ,1) under exp(−d²/2h²), and E k(X, X')."""
    same = h / math.sqrt(h**2 + 2)
    return 2 * same * (1 - math.exp(-(mu**2) / (2 * (h**2 + 2)))), same


def test_energy_distance_is_zero_for_one_sample_and_grows_with_a_shift() -> None:
    x = np.random.default_rng(0).normal(size=(300, 2))
    assert sq.energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    y = np.random.default_rng(1).normal(size=(300, 2))
    same, shifted = sq.energy_distance(x, y), sq.energy_distance(x, y + 0.5)
    assert shifted > 5 * same


@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_energy_distance_matches_the_gaussian_value_plus_the_v_statistic_bias(mu: float) -> None:
    values = []
    for r in range(REPLICATES):
        rng = np.random.default_rng(100 + r)
        values.append(sq.energy_distance(rng.normal(size=(N, 1)), mu + rng.normal(size=(N, 1))))
    # the V-statistic keeps the zero diagonal: + E|X − X'| (1/n + 1/m)
    _within(values, gaussian_energy_distance(mu) + 2 * (2 / math.sqrt(math.pi)) / N)


@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_mmd_matches_the_gaussian_value_plus_the_v_statistic_bias(mu: float) -> None:
    h = 1.0
    squared, same = gaussian_mmd2(mu, h)
    values = []
    for r in range(REPLICATES):
        rng = np.random.default_rng(200 + r)
        x, y = rng.normal(size=(N, 1)), mu + rng.normal(size=(N, 1))
        values.append(sq.mmd(x, y, h) ** 2)
    _within(values, squared + 2 * (1 - same) / N)
    x = np.random.default_rng(0).normal(size=(200, 3))
    assert sq.mmd(x, x, 1.0) == pytest.approx(0.0, abs=1e-6)


def test_median_bandwidth_of_a_standard_normal() -> None:
    # |X − X'| ~ √2 |N(0, 1)|: median √2 · Φ⁻¹(3/4)
    values = [
        sq.median_bandwidth(np.random.default_rng(300 + r).normal(size=(N, 1)))
        for r in range(REPLICATES)
    ]
    _within(values, math.sqrt(2) * norm.ppf(0.75))


def test_frechet_distance_of_gaussians() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5000, 3))
    assert sq.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5])
    # equal covariances: ‖Δμ‖²; a copy scaled by c: ‖(c − 1)μ‖² + (c − 1)² tr(Σ)
    assert sq.frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    mu = x.mean(axis=0)
    expected = 4 * float(mu @ mu) + 4 * np.trace(np.cov(x.T))
    assert sq.frechet_distance(x, 3 * x) == pytest.approx(expected, rel=1e-6)


def test_a_collapsed_generator_shows_in_every_metric() -> None:
    rng = np.random.default_rng(5)
    train, a, b = (rng.normal(size=(n, 2)) * [2.0, 0.5] + 3 for n in (2000, 500, 500))
    good = rng.normal(size=(500, 2)) * [2.0, 0.5] + 3
    collapsed = np.tile(a.mean(axis=0), (500, 1))  # one point: every sample the same
    fine, bad = sq.evaluate(good, a, b, train), sq.evaluate(collapsed, a, b, train)
    assert fine["energy_distance_floor"] == bad["energy_distance_floor"]
    assert fine["energy_distance"] < 3 * fine["energy_distance_floor"]
    assert bad["energy_distance"] > 20 * bad["energy_distance_floor"]
    assert bad["mmd"] > 5 * bad["mmd_floor"]
    assert bad["evaluation_rows"] == 500 and bad["generated_non_finite"] == 0


def test_image_metrics_separate_real_digits_from_noise() -> None:
    from ml.core.datasets import load_builtin

    digits = load_builtin("digits")
    order = np.random.default_rng(0).permutation(len(digits.x))
    train, a, b = order[:1200], order[1200:1500], order[1500:1800]
    x, y = digits.x, digits.y
    noise = np.random.default_rng(1).uniform(0, 16, size=(300, 8, 8, 1)).astype(np.float32)
    real = sq.evaluate(x[b], x[a], x[b], x[train], y[train], images=True)
    fake = sq.evaluate(noise, x[a], x[b], x[train], y[train], images=True)
    assert real["frechet_distance"] == pytest.approx(real["frechet_distance_floor"])
    assert fake["frechet_distance"] > 3 * fake["frechet_distance_floor"]
    assert fake["classifier_confidence"] < real["classifier_confidence_floor"]
    assert real["classifier_confidence_floor"] > 0.8
