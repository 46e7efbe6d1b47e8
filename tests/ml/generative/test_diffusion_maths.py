"""The diffusion chain's maths (ml.generative.diffusion_maths): schedules, forward process,
posterior, samplers, the bound, and the closed-form entropy production (THERMODYNAMICS.md
section B)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ml.generative.diffusion_maths import (
    BETA_MAX,
    GaussianDiffusion,
    betas_for,
    stratified_timesteps,
    timestep_subsequence,
)

CHAINS = [("linear", 1000), ("cosine", 1000), ("sohl_dickstein", 40)]


def exact_eps(m: float, s2: float, chain: GaussianDiffusion):
    """The best ε-predictor for 1-D data N(m, s²): E[ε | x_t] (Gaussian conditioning)."""

    def eps(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        a = chain.alpha_bar[t].reshape(-1, *([1] * (x.ndim - 1)))
        return np.sqrt(1 - a) * (x - np.sqrt(a) * m) / (a * s2 + 1 - a)

    return eps


def test_entropy_production_closed_form_sum() -> None:
    chain = GaussianDiffusion.named("linear", 1000)
    sigma = chain.entropy_production(np.array([0.0]), np.array([4.0]))
    assert sigma.shape == (1000,)
    assert (sigma >= 0).all()  # detailed balance with N(0, 1): the KL to it never grows
    assert sigma.sum() == pytest.approx(0.5 * (3 - math.log(4)), abs=1e-7)  # 0.806853
    assert sigma.sum() == pytest.approx(0.806853, abs=1e-6)
    kl = chain.gaussian_kl_path(np.array([0.0]), np.array([4.0]))
    assert sigma.sum() == pytest.approx(kl[0] - kl[-1], rel=1e-12)


def test_entropy_production_vanishes_at_equilibrium_and_adds_over_dimensions() -> None:
    chain = GaussianDiffusion.named("cosine", 200)
    assert np.abs(chain.entropy_production(np.zeros(3), np.ones(3))).max() < 1e-15
    one = chain.entropy_production(np.array([1.5]), np.array([0.2]))
    two = chain.entropy_production(np.array([1.5, 0.0]), np.array([0.2, 4.0]))
    other = chain.entropy_production(np.array([0.0]), np.array([4.0]))
    np.testing.assert_allclose(two, one + other, rtol=1e-12)
    # the mean's part: ½ |m|² (ᾱ_{t−1} − ᾱ_t)
    shifted = chain.entropy_production(np.array([2.0]), np.array([1.0]))
    np.testing.assert_allclose(shifted, 2.0 * (chain.alpha_bar[:-1] - chain.alpha_bar[1:]))


@pytest.mark.parametrize(("schedule", "T"), CHAINS)
def test_schedules_are_clipped_and_alpha_bar_falls(schedule: str, T: int) -> None:
    chain = GaussianDiffusion.named(schedule, T)
    betas = chain.beta[1:]
    assert len(betas) == T
    assert ((betas > 0) & (betas <= BETA_MAX)).all()
    assert (np.diff(chain.alpha_bar) < 0).all()
    assert chain.alpha_bar[0] == 1.0 and 0 < chain.alpha_bar[-1] < 1e-3
    assert np.isfinite(chain.beta_tilde).all()


def test_schedule_endpoints() -> None:
    linear = betas_for("linear", 1000)
    assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)
    sohl = betas_for("sohl_dickstein", 40)
    assert sohl[0] == pytest.approx(1 / 40) and sohl[-2] == pytest.approx(0.5)
    assert sohl[-1] == BETA_MAX  # 1/(T − T + 1) = 1, clipped
    cosine = betas_for("cosine", 1000)
    assert cosine[-1] == BETA_MAX  # the cosine schedule's last β is 1 as well
    # cosine: ᾱ_t follows cos² up to the clipped tail
    t = np.arange(1, 501) / 1000
    f = np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    np.testing.assert_allclose(np.cumprod(1 - cosine[:500]), f, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown schedule"):
        betas_for("quadratic", 10)


def test_q_sample_moments() -> None:
    chain = GaussianDiffusion.named("linear", 1000)
    rng = np.random.default_rng(0)
    n, x0 = 200_000, 1.7
    for t in (1, 100, 500, 1000):
        xt = chain.q_sample(np.full((n, 1), x0), np.full(n, t), rng.standard_normal((n, 1)))
        a = chain.alpha_bar[t]
        var = 1 - a
        assert abs(xt.mean() - math.sqrt(a) * x0) < 5 * math.sqrt(var / n)
        # Var of the sample variance of a Gaussian: 2σ⁴/(n − 1)
        assert abs(xt.var() - var) < 5 * math.sqrt(2 * var**2 / (n - 1))


@pytest.mark.parametrize(("schedule", "T"), CHAINS)
def test_posterior_matches_a_brute_force_gaussian_product(schedule: str, T: int) -> None:
    """q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x_0), normalised on a grid."""
    chain = GaussianDiffusion.named(schedule, T)
    rng = np.random.default_rng(1)
    for t in (2, T // 2, T):
        x0, xt = rng.normal(size=2)
        mean, var = chain.posterior(np.array([x0]), np.array([xt]), np.array([t]))
        beta, prev = chain.beta[t], chain.alpha_bar[t - 1]
        spread = math.sqrt(var[0])
        grid = np.linspace(mean[0] - 12 * spread, mean[0] + 12 * spread, 200_001)
        log_p = -((xt - math.sqrt(1 - beta) * grid) ** 2) / (2 * beta)
        log_p += -((grid - math.sqrt(prev) * x0) ** 2) / (2 * (1 - prev))
        w = np.exp(log_p - log_p.max())
        w /= w.sum()
        grid_mean = float((w * grid).sum())
        grid_var = float((w * (grid - grid_mean) ** 2).sum())
        assert grid_mean == pytest.approx(mean[0], abs=1e-6 * max(1.0, spread))
        assert grid_var == pytest.approx(var[0], rel=1e-5)


def test_eps_mean_is_the_posterior_mean_for_the_true_noise() -> None:
    chain = GaussianDiffusion.named("cosine", 100)
    rng = np.random.default_rng(2)
    x0, eps = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    t = rng.integers(1, 101, size=50)
    xt = chain.q_sample(x0, t, eps)
    np.testing.assert_allclose(
        chain.model_mean(xt, t, eps), chain.posterior(x0, xt, t)[0], rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(chain.predict_x0(xt, t, eps), x0, atol=1e-6)


def test_bound_term_weight_is_the_gaussian_kl() -> None:
    """L_{t−1} = weight · ‖ε − ε̂‖² equals KL(N(μ̃, β̃) ‖ N(μ_θ, β̃)) = ‖μ̃ − μ_θ‖² / 2β̃."""
    chain = GaussianDiffusion.named("linear", 1000)
    rng = np.random.default_rng(3)
    for t in (2, 10, 700):
        x0, eps, eps_hat = rng.normal(size=(3, 1, 4))
        xt = chain.q_sample(x0, np.array([t]), eps)
        mu_true = chain.posterior(x0, xt, np.array([t]))[0]
        mu_model = chain.model_mean(xt, np.array([t]), eps_hat)
        kl = ((mu_true - mu_model) ** 2).sum() / (2 * chain.beta_tilde[t])
        assert chain.term_weight(t) * ((eps - eps_hat) ** 2).sum() == pytest.approx(kl, rel=1e-8)


def test_timestep_subsequences() -> None:
    for steps in (1, 2, 20, 100, 999, 1000):
        taus = timestep_subsequence(1000, steps)
        assert len(taus) == steps and len(set(taus.tolist())) == steps
        assert taus[-1] == 1000 and (steps == 1 or taus[0] == 1)
        assert (np.diff(taus) > 0).all()
    strata = stratified_timesteps(1000, 100)
    assert strata[0] == (2, 3) and strata[-1][1] == 1001
    assert all(a < b == c for (a, b), (c, _) in itertools.pairwise(strata))
    assert stratified_timesteps(40, 100) == [(t, t + 1) for t in range(2, 41)]


def test_steps_beyond_the_chain_and_unknown_samplers_are_refused() -> None:
    chain = GaussianDiffusion.named("sohl_dickstein", 40)
    eps = exact_eps(0.0, 1.0, chain)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="between 1 and the chain's 40 timesteps"):
        chain.sample(eps, (4, 1), rng, "ddim", steps=41)
    with pytest.raises(ValueError, match="between 1 and"):
        chain.sample(eps, (4, 1), rng, "ddpm", steps=0)
    with pytest.raises(ValueError, match="unknown sampler 'euler'; use one of ddpm, ddim"):
        chain.sample(eps, (4, 1), rng, "euler")


def test_ddim_is_a_deterministic_function_of_x_T() -> None:
    chain = GaussianDiffusion.named("linear", 1000)
    eps = exact_eps(1.0, 0.25, chain)
    a = chain.sample(eps, (64, 1), np.random.default_rng(5), "ddim", steps=50)
    b = chain.sample(eps, (64, 1), np.random.default_rng(5), "ddim", steps=50)
    np.testing.assert_array_equal(a, b)
    # only x_T is drawn: the same first draw, whatever follows, gives the same samples
    x_t = np.random.default_rng(5).standard_normal((64, 1))
    x = x_t
    taus = timestep_subsequence(1000, 50)
    for i in range(49, -1, -1):
        t = int(taus[i])
        prev = chain.alpha_bar[taus[i - 1]] if i else 1.0
        e = eps(x, np.full(64, t))
        x = math.sqrt(prev) * chain.predict_x0(x, t, e) + math.sqrt(1 - prev) * e
    np.testing.assert_allclose(a, x, rtol=1e-12)
    ddpm = chain.sample(eps, (64, 1), np.random.default_rng(5), "ddpm", steps=50)
    assert not np.allclose(ddpm, a)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_with_the_exact_score_recover_gaussian_data(sampler: str) -> None:
    m, s2, n = 1.0, 0.25, 20_000
    chain = GaussianDiffusion.named("linear", 1000)
    eps = exact_eps(m, s2, chain)
    x = chain.sample(eps, (n, 1), np.random.default_rng(7), sampler)
    assert abs(x.mean() - m) < 5 * math.sqrt(s2 / n)
    assert abs(x.var() - s2) < 5 * math.sqrt(2 * s2**2 / n) + 0.005  # + discretisation bias
    # With 50 of the 1000 steps both come out too narrow: DDPM's fixed σ² = β̃ leaves out
    # Var(x_0 | x_t) on a coarse chain, and DDIM's large steps under-integrate its ODE.
    few = chain.sample(eps, (n, 1), np.random.default_rng(7), sampler, steps=50)
    assert abs(few.mean() - m) < 5 * math.sqrt(s2 / n)
    assert 0.6 * s2 < few.var() < x.var()


def test_the_bound_is_above_the_true_nll_and_stratification_is_unbiased() -> None:
    m, s2, n = 0.5, 0.3, 4000
    chain = GaussianDiffusion.named("sohl_dickstein", 40)
    rng = np.random.default_rng(11)
    x0 = m + math.sqrt(s2) * rng.standard_normal((n, 1))
    true_nll = 0.5 * (math.log(2 * math.pi * s2) + (x0[:, 0] - m) ** 2 / s2)
    eps = exact_eps(m, s2, chain)
    exact = chain.bound(x0, eps, np.random.default_rng(12), strata=100)["total"]  # every t
    assert exact.mean() > true_nll.mean()
    se = exact.std() / math.sqrt(n)
    assert exact.mean() - true_nll.mean() < 0.5  # a tight chain with the best ε
    coarse = chain.bound(x0, eps, np.random.default_rng(13), strata=5)["total"]
    se = math.hypot(se, coarse.std() / math.sqrt(n))
    assert abs(coarse.mean() - exact.mean()) < 5 * se
    shared = chain.bound(x0[:3], eps, np.random.default_rng(0), strata=5, shared_noise=True)
    again = chain.bound(x0[[2, 1, 0]], eps, np.random.default_rng(0), 5, shared_noise=True)
    np.testing.assert_allclose(shared["total"], again["total"][::-1])  # a row's own value
