"""The NumPy telemetry estimators of ml.core.telemetry against cases with known answers.

Statistical checks use 5 standard errors computed from the samples themselves (independent
draws, or batch means of a Markov chain), never a hand-tuned tolerance; everything is seeded.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ml.core.telemetry import (
    EQUILIBRIUM_MIN_POINTS,
    EQUILIBRIUM_WINDOW,
    Ema,
    EquilibriumTest,
    Measurement,
    Thermometer,
    WeightEntropy,
    gaussian_entropy,
    gradient_noise_parts,
    noise_temperature,
    nominal_temperature,
)

Z = 5.0  # standard errors


def batch_means_se(series: np.ndarray, n_batches: int = 40) -> float:
    """Standard error of the mean of a stationary, correlated series (batch means)."""
    usable = len(series) - len(series) % n_batches
    means = series[:usable].reshape(n_batches, -1).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(n_batches))


# --- gradient noise: linear regression with an exact G and Σ --------------------------------


def linear_regression_case(seed: int = 0, n: int = 60, d: int = 3):
    """Per-example gradients of ℓ_i = ½(x_i·θ − y_i)² at a fixed θ, with exact |G|² and tr Σ."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.array([1.0, 2.0, 0.5])[:d]
    y = x @ rng.normal(size=d) + rng.normal(size=n)
    theta = rng.normal(size=d)
    per_example = x * (x @ theta - y)[:, None]  # ∇ℓ_i = x_i (x_i·θ − y_i)
    g_full = per_example.mean(axis=0)
    # The same G from the normal equations, as a check on the per-example gradients.
    np.testing.assert_allclose(g_full, (x.T @ x @ theta - x.T @ y) / n, rtol=1e-12)
    trace_sigma = float(np.mean(np.sum((per_example - g_full) ** 2, axis=1)))  # population
    return per_example, float(g_full @ g_full), trace_sigma


@pytest.mark.parametrize(("batch", "micro"), [(16, 4), (12, 6), (8, 2)])
def test_gradient_noise_parts_are_unbiased_for_linear_regression(batch: int, micro: int) -> None:
    per_example, g_sq_exact, trace_exact = linear_regression_case()
    rng = np.random.default_rng(1)
    draws, k = 20_000, batch // micro
    index = rng.integers(0, len(per_example), size=(draws, batch))  # with replacement: i.i.d.
    micro_grads = per_example[index].reshape(draws, k, micro, -1).mean(axis=2)  # g_1..g_K
    s_b = np.sum(micro_grads**2, axis=2).mean(axis=1)  # S_b = mean_k |g_k|²
    g_batch = micro_grads.mean(axis=1)  # g_B = mean_k g_k, as the trainer does
    batch_sq = np.sum(g_batch**2, axis=1)
    parts = np.array(
        [gradient_noise_parts(s, q, batch, micro) for s, q in zip(s_b, batch_sq, strict=True)]
    )
    for estimates, exact in ((parts[:, 0], g_sq_exact), (parts[:, 1], trace_exact)):
        se = estimates.std(ddof=1) / math.sqrt(draws)
        assert abs(estimates.mean() - exact) < Z * se, (estimates.mean(), exact, se)
    # The test has power: the naive |g_B|² is biased by tr Σ / B, far beyond the error.
    assert batch_sq.mean() - g_sq_exact > 20 * batch_sq.std(ddof=1) / math.sqrt(draws)


def test_gradient_noise_parts_inverts_the_expectations_exactly() -> None:
    # E S_b = |G|² + tr Σ / b and E |g_B|² = |G|² + tr Σ / B: the estimator solves these.
    g_sq, trace, big, small = 2.5, 7.0, 32, 8
    got = gradient_noise_parts(g_sq + trace / small, g_sq + trace / big, big, small)
    assert got == pytest.approx((g_sq, trace), rel=1e-12)


@pytest.mark.parametrize(("batch", "micro"), [(8, 8), (8, 16)])
def test_gradient_noise_parts_rejects_micro_batches_as_large_as_the_batch(batch, micro) -> None:
    with pytest.raises(ValueError):
        gradient_noise_parts(1.0, 1.0, batch, micro)


# --- temperatures -----------------------------------------------------------------------


def test_nominal_temperature() -> None:
    assert nominal_temperature(0.1, 32) == pytest.approx(0.1 / 64, rel=1e-15)
    assert nominal_temperature(3e-4, 7) == pytest.approx(3e-4 / 14, rel=1e-15)


@pytest.mark.parametrize(
    ("lr", "momentum", "batch", "trace", "d"),
    [(0.1, 0.0, 32, 3.7, 11), (0.05, 0.9, 64, 120.0, 1000), (1e-3, 0.5, 8, 0.25, 3)],
)
def test_noise_temperature_formula(lr, momentum, batch, trace, d) -> None:
    expected = (lr / (1.0 - momentum)) / (2.0 * batch) * trace / d
    assert noise_temperature(lr, momentum, batch, trace, d) == pytest.approx(expected, rel=1e-14)


# --- entropy ------------------------------------------------------------------------------


def test_gaussian_entropy_closed_form_and_scale() -> None:
    variances = np.array([1.0, 2.0, 0.5, 1e-3])
    closed = sum(0.5 * math.log(2 * math.pi * math.e * v) for v in variances)
    assert gaussian_entropy(variances) == pytest.approx(closed, rel=1e-14)
    assert gaussian_entropy(variances, scale=2.5) == pytest.approx(2.5 * closed, rel=1e-14)
    # Unit variance: ½ ln(2πe) per coordinate.
    assert gaussian_entropy(np.ones(7)) == pytest.approx(3.5 * math.log(2 * math.pi * math.e))
    # A zero variance is clamped, not -inf / nan.
    assert math.isfinite(gaussian_entropy(np.array([0.0, 1.0])))


def _feed(estimator: WeightEntropy, path: np.ndarray) -> list[float | None]:
    return [estimator.update(theta) for theta in path]


def _check_weight_entropy(path: np.ndarray, variance: np.ndarray, n_params: int) -> None:
    """The estimator's output is the Gaussian entropy of `variance` (Var of θ − EMA(θ))."""
    d = path.shape[1]
    estimator = WeightEntropy(n_params=n_params, sampled=d, decay=0.9)
    outputs = _feed(estimator, path)
    assert outputs[:3] == [None, None, outputs[2]] and outputs[2] is not None
    state = estimator.state()
    v_hat = np.asarray(state["m2"]) / (int(state["count"]) - 1)  # type: ignore[call-overload]
    scale = n_params / d
    assert outputs[-1] == pytest.approx(gaussian_entropy(v_hat, scale), rel=1e-12)
    # The coordinates are independent: the spread of the per-coordinate estimates across
    # coordinates gives the standard error of their sum and of their mean ratio.
    ratio = v_hat / variance
    assert abs(ratio.mean() - 1) < Z * ratio.std(ddof=1) / math.sqrt(d)
    half_log = 0.5 * np.log(v_hat)
    se = scale * half_log.std(ddof=1) * math.sqrt(d)
    expected = gaussian_entropy(variance, scale)
    assert abs(outputs[-1] - expected) < Z * se, (outputs[-1], expected, se)


def test_weight_entropy_of_a_gaussian_random_walk() -> None:
    # θ_t = θ_{t-1} + ε_t, ε ~ N(0, σ²). With c the EMA (decay a) and e = θ − c:
    # e_t = a (e_{t-1} + ε_t), so the stationary Var e = a² σ² / (1 − a²).
    rng = np.random.default_rng(2)
    d, steps, a = 200, 20_000, 0.9
    sigma = np.linspace(0.5, 2.0, d)
    path = np.cumsum(rng.normal(size=(steps, d)) * sigma, axis=0)
    _check_weight_entropy(path, a**2 * sigma**2 / (1 - a**2), n_params=1000)


def test_weight_entropy_of_a_stationary_gaussian_process() -> None:
    # i.i.d. θ_t ~ N(m, s²): Var c = s² (1 − a)/(1 + a) and e_t = a (θ_t − c_{t-1}), so
    # Var e = a² s² · 2/(1 + a).
    rng = np.random.default_rng(3)
    d, steps, a = 200, 10_000, 0.9
    s = np.linspace(0.1, 3.0, d)
    path = 5.0 + rng.normal(size=(steps, d)) * s
    _check_weight_entropy(path, a**2 * s**2 * 2 / (1 + a), n_params=200)


def test_weight_entropy_state_round_trip() -> None:
    rng = np.random.default_rng(4)
    path = rng.normal(size=(50, 10))
    whole = WeightEntropy(10, 10)
    first = WeightEntropy(10, 10)
    expected = _feed(whole, path)[-1]
    _feed(first, path[:30])
    second = WeightEntropy(10, 10)
    second.restore(first.state())
    assert _feed(second, path[30:])[-1] == pytest.approx(expected, rel=1e-12)


# --- Ema ----------------------------------------------------------------------------------


def test_ema_bias_correction() -> None:
    ema = Ema(0.9)
    assert ema.mean is None
    ema.update(3.0)
    assert ema.mean == pytest.approx(3.0, rel=1e-15)  # the first value is the first sample
    samples = [3.0, -1.0, 4.0, 10.0]
    for x in samples[1:]:
        ema.update(x)
    weights = np.array([0.9**k for k in range(len(samples))][::-1])
    assert ema.mean == pytest.approx(float(weights @ samples / weights.sum()), rel=1e-12)


def test_ema_of_a_constant_is_that_constant_and_it_converges_after_a_change() -> None:
    ema = Ema(0.99)
    for _ in range(10):
        ema.update(2.5)
        assert ema.mean == pytest.approx(2.5, rel=1e-12)
    for _ in range(5000):
        ema.update(-7.0)
    assert ema.mean == pytest.approx(-7.0, rel=1e-12)


# --- Thermometer --------------------------------------------------------------------------


def _measurement(step: int = 1, **overrides) -> Measurement:
    values = dict(
        step=step,
        learning_rate=0.1,
        batch_size=16,
        micro_size=4,
        micro_sqnorm_mean=3.0,
        batch_sqnorm=1.5,
        theta_dot_grad=0.2,
        velocity_sqnorm=1.5,
        heat=0.01,
        internal_energy=1.0,
        theta_sample=np.zeros(4) + step,
    )
    values.update(overrides)
    return Measurement(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("optimizer", "momentum"), [("adam", 0.9), ("rmsprop", 0.0)])
def test_thermometer_temperatures_and_fdr_defined_for_adaptive_optimizers(optimizer, momentum):
    thermometer = Thermometer(optimizer=optimizer, momentum=momentum, n_params=4, sampled=4)
    rate = 0.1 * (1 - momentum) if momentum else 0.1  # adam: α = η(1 − β₁) late in a run
    for step in range(1, 6):
        out = thermometer.update(
            _measurement(
                step,
                precond_micro_sqnorm_mean=30.0,
                precond_batch_sqnorm=12.0,
                velocity_sqnorm=20.0,
                step_rate=rate,
            )
        )
    p_trace = gradient_noise_parts(30.0, 12.0, 16, 4)[1]
    t_noise = rate / (1 - momentum) / 32 * p_trace / 4
    assert out["temperature_noise"] == pytest.approx(t_noise, rel=1e-12)
    assert out["fdr_ratio"] == pytest.approx(0.2 / (rate / 2 * (1 + momentum) * 20.0), rel=1e-12)
    assert out["temperature_virial"] == pytest.approx(0.2 / 4)
    assert out["temperature_nominal"] == pytest.approx(0.1 / 32)
    assert out["entropy_production"] == pytest.approx(0.01 / t_noise, rel=1e-12)
    excess = (0.01 - rate * p_trace / 16) / t_noise
    assert out["entropy_production_excess"] == pytest.approx(excess, rel=1e-12)
    assert out["free_energy"] == pytest.approx(1.0 - t_noise * out["weight_entropy"])


def test_thermometer_virial_waits_for_a_centre_and_t_virial_stands_in_for_t_noise() -> None:
    thermometer = Thermometer(optimizer="sgd", momentum=0.0, n_params=4, sampled=4)
    first = thermometer.update(_measurement(1, centered=False, theta_dot_grad=99.0))
    assert first["temperature_virial"] is None and first["fdr_ratio"] is None
    out = thermometer.update(_measurement(2))
    assert out["temperature_virial"] == pytest.approx(0.2 / 4)  # the uncentred 99 is not in it
    # A noise-trace estimate that is not positive leaves T_virial for the entropy production.
    cold = Thermometer(optimizer="sgd", momentum=0.0, n_params=4, sampled=4)
    out = cold.update(_measurement(1, micro_sqnorm_mean=1.0, batch_sqnorm=1.5))
    assert out["temperature_noise"] < 0
    assert out["entropy_production"] == pytest.approx(0.01 / (0.2 / 4), rel=1e-12)


def test_grad_noise_scale_reports_its_lower_bound_when_the_g_estimate_is_not_positive() -> None:
    # S_b = 3, |g_B|² = 0.5, B = 16, b = 4: |G|² ≈ (16·0.5 − 4·3)/12 < 0.
    thermometer = Thermometer(optimizer="adam", momentum=0.9, n_params=4, sampled=4)
    out = thermometer.update(_measurement(1, micro_sqnorm_mean=3.0, batch_sqnorm=0.5))
    g_sq, trace = gradient_noise_parts(3.0, 0.5, 16, 4)
    assert g_sq < 0 < trace
    # E|g_B|² = |G|² + tr Σ / B ≥ |G|², so tr Σ / E|g_B|² ≤ B_simple.
    assert out["grad_noise_scale"] == pytest.approx(trace / 0.5, rel=1e-12)
    assert out["grad_noise_scale_lower_bound"] == 1.0
    fine = Thermometer(optimizer="adam", momentum=0.9, n_params=4, sampled=4).update(
        _measurement(1)
    )
    assert fine["grad_noise_scale_lower_bound"] == 0.0


@pytest.mark.parametrize(("optimizer", "momentum"), [("sgd", 0.0), ("sgd", 0.9), ("sgld", 0.5)])
def test_thermometer_noise_temperature_defined_for_sgd(optimizer: str, momentum: float) -> None:
    thermometer = Thermometer(optimizer=optimizer, momentum=momentum, n_params=4, sampled=4)
    out = thermometer.update(_measurement())
    _, trace = gradient_noise_parts(3.0, 1.5, 16, 4)
    assert out["temperature_noise"] == pytest.approx(
        noise_temperature(0.1, momentum, 16, trace, 4), rel=1e-12
    )
    scale = 0.05 * (1 + momentum)
    assert out["fdr_ratio"] == pytest.approx(0.2 / (scale * 1.5), rel=1e-12)
    assert out["grad_noise_scale"] == pytest.approx(
        trace / gradient_noise_parts(3.0, 1.5, 16, 4)[0], rel=1e-12
    )


def test_thermometer_on_stationary_sgd_in_a_quadratic() -> None:
    """Plain SGD on L = ½ θᵀHθ with Gaussian gradient noise, weight decay 0.

    θ ← θ − η g, g = Hθ + ξ with ξ the mean of K micro-batch noises ξ_k ~ N(0, C/b), so
    ξ ~ N(0, C/B) and the per-example covariance is C. For diagonal H and C the exact discrete
    stationary law (Lyapunov: s = (1 − ηh)² s + η² c/B) is s_i = η c_i / (B h_i (2 − η h_i)), so

    * ⟨θ·g⟩ = Σ h_i s_i = Σ η c_i / (B (2 − η h_i)): T_virial = that / d, which is NOT
      (η/2B) tr C / d = T_noise except to first order in η h;
    * ⟨θ·g⟩ = (η/2)⟨|g|²⟩ exactly (stationarity of |θ|²): fdr_ratio → 1;
    * the two-pass heat L_B(θ_t) − L_B(θ_{t+1}), L_B = ½θᵀHθ + ξ·θ, has ⟨Q⟩ = η tr C / B, so
      entropy_production_excess → 0.

    The Thermometer's EMAs use a decay so close to 1 that they are plain means over the run;
    tolerances are 5 batch-means standard errors of those means.
    """
    rng = np.random.default_rng(5)
    d, lr, big, k, steps = 8, 0.1, 32, 4, 20_000
    small = big // k
    h = np.linspace(1.0, 5.0, d)  # η h in [0.1, 0.5]
    c = np.linspace(0.5, 2.0, d)
    s_exact = lr * c / (big * h * (2 - lr * h))
    theta = rng.normal(size=d) * np.sqrt(s_exact)  # start in the stationary law
    micro_noise = rng.normal(size=(steps, k, d)) * np.sqrt(c / small)

    thermometer = Thermometer(optimizer="sgd", momentum=0.0, n_params=d, sampled=d, decay=1 - 1e-9)
    virial, velocity, trace, heat = (np.empty(steps) for _ in range(4))
    out: dict[str, float | None] = {}
    for t in range(steps):
        micro_grads = h * theta + micro_noise[t]
        g = micro_grads.mean(axis=0)
        xi = micro_noise[t].mean(axis=0)
        new = theta - lr * g

        def batch_loss(p: np.ndarray, xi: np.ndarray = xi) -> float:
            return float(0.5 * p @ (h * p) + xi @ p)

        virial[t], velocity[t] = theta @ g, g @ g
        heat[t] = batch_loss(theta) - batch_loss(new)
        s_b = float(np.mean(np.sum(micro_grads**2, axis=1)))
        trace[t] = gradient_noise_parts(s_b, velocity[t], big, small)[1]
        out = thermometer.update(
            Measurement(
                step=t + 1,
                learning_rate=lr,
                batch_size=big,
                micro_size=small,
                micro_sqnorm_mean=s_b,
                batch_sqnorm=float(velocity[t]),
                theta_dot_grad=float(virial[t]),
                velocity_sqnorm=float(velocity[t]),  # v = g for plain SGD
                heat=float(heat[t]),
                internal_energy=0.5 * float(theta @ (h * theta)),
                theta_sample=theta,
            )
        )
        theta = new

    # fdr_ratio = ⟨θ·g⟩ / ((η/2)⟨|v|²⟩) → 1; its error is that of ⟨θ·g − (η/2)|v|²⟩.
    denominator = 0.5 * lr * velocity.mean()
    se = batch_means_se(virial - 0.5 * lr * velocity) / denominator
    assert abs(out["fdr_ratio"] - 1) < Z * se, (out["fdr_ratio"], se)

    t_virial_exact = float(np.sum(lr * c / (big * (2 - lr * h)))) / d
    t_noise_exact = lr / (2 * big) * c.sum() / d
    se_virial = batch_means_se(virial) / d
    assert abs(out["temperature_virial"] - t_virial_exact) < Z * se_virial
    se_noise = lr / (2 * big) * batch_means_se(trace) / d
    assert abs(out["temperature_noise"] - t_noise_exact) < Z * se_noise
    # The two temperatures differ for this process by more than the error (a ratio of
    # Σ c_i/(1 − η h_i/2) to Σ c_i): equating them would be wrong beyond first order in η h.
    assert t_virial_exact - t_noise_exact > 10 * (se_virial + se_noise)
    assert out["temperature_virial"] - out["temperature_noise"] > Z * (se_virial + se_noise)

    heat_exact = lr * c.sum() / big
    assert abs(out["heat"] - heat_exact) < Z * batch_means_se(heat)
    excess_se = math.hypot(batch_means_se(heat), lr / big * batch_means_se(trace))
    assert abs(out["entropy_production_excess"]) < Z * excess_se / out["temperature_noise"]
    assert out["entropy_production"] == pytest.approx(
        out["heat"] / out["temperature_noise"], rel=1e-12
    )


def test_thermometer_fdr_with_momentum_on_a_stationary_quadratic() -> None:
    """Heavy-ball SGD, v ← μv + g, θ ← θ − ηv: ⟨θ·g⟩ = (η/2)(1+μ)⟨|v|²⟩ exactly (Yaida 2018)."""
    rng = np.random.default_rng(6)
    d, lr, mu, big, k, steps, burn = 6, 0.05, 0.5, 16, 4, 40_000, 2_000
    small = big // k
    h = np.linspace(0.5, 3.0, d)
    c = np.ones(d)
    theta, v = np.zeros(d), np.zeros(d)
    noise = rng.normal(size=(steps + burn, k, d)) * np.sqrt(c / small)
    thermometer = Thermometer(optimizer="sgd", momentum=mu, n_params=d, sampled=d, decay=1 - 1e-9)
    virial, vel = np.empty(steps), np.empty(steps)
    out: dict[str, float | None] = {}
    for t in range(steps + burn):
        micro = h * theta + noise[t]
        g = micro.mean(axis=0)
        v = mu * v + g
        if t >= burn:
            i = t - burn
            virial[i], vel[i] = theta @ g, v @ v
            out = thermometer.update(
                Measurement(
                    step=i + 1,
                    learning_rate=lr,
                    batch_size=big,
                    micro_size=small,
                    micro_sqnorm_mean=float(np.mean(np.sum(micro**2, axis=1))),
                    batch_sqnorm=float(g @ g),
                    theta_dot_grad=float(virial[i]),
                    velocity_sqnorm=float(vel[i]),  # the buffer after this step's update
                    heat=None,
                    internal_energy=0.0,
                    theta_sample=theta,
                )
            )
        theta = theta - lr * v
    scale = 0.5 * lr * (1 + mu)
    se = batch_means_se(virial - scale * vel) / (scale * vel.mean())
    assert abs(out["fdr_ratio"] - 1) < Z * se, (out["fdr_ratio"], se)


# --- equilibrium ----------------------------------------------------------------------------


def test_equilibrium_needs_a_window_and_the_relation_resolved_within_its_tolerance() -> None:
    rng = np.random.default_rng(7)
    test = EquilibriumTest()
    right = 1.0 + 0.01 * rng.normal(size=EQUILIBRIUM_WINDOW)
    left = right + 0.01 * rng.normal(size=EQUILIBRIUM_WINDOW)  # O_L = O_R within 1%
    results = [test.update(a, b) for a, b in zip(left, right, strict=True)]
    assert all(r == (None, None) for r in results[: EQUILIBRIUM_MIN_POINTS - 1])
    flag, t = results[-1]
    r = left - right
    assert flag == 1.0 and t == pytest.approx(r.mean() / (r.std(ddof=1) / math.sqrt(len(r))))
    # O_L = 2 O_R, precisely measured: not in equilibrium (a descending run).
    drifting = EquilibriumTest()
    for b in right:
        flag, _ = drifting.update(2 * b, b)
    assert flag == 0.0
    # Unbiased but too noisy to resolve the tolerance: 0, not a false "equilibrium".
    noisy = EquilibriumTest()
    for b in right:
        flag, _ = noisy.update(b + 10 * rng.normal(), b)
    assert flag == 0.0
    noisy.reset()
    assert noisy.update(1.0, 1.0) == (None, None)


def test_thermometer_reports_equilibrium_and_keeps_its_window_over_a_resume() -> None:
    thermometer = Thermometer(optimizer="sgd", momentum=0.0, n_params=4, sampled=4)
    # fdr holds exactly: θ·g = (η/2)|v|² with η = 0.1 and |v|² = 4.
    points = [thermometer.update(_measurement(s, velocity_sqnorm=4.0)) for s in range(1, 8)]
    assert points[EQUILIBRIUM_MIN_POINTS - 2]["equilibrium"] is None
    assert points[-1]["equilibrium"] == 1.0
    scalars, arrays = thermometer.state()
    resumed = Thermometer(optimizer="sgd", momentum=0.0, n_params=4, sampled=4)
    resumed.restore(json.loads(json.dumps(scalars)), arrays)
    assert list(resumed.equilibrium.samples) == list(thermometer.equilibrium.samples)
