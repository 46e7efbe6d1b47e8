"""Temperatures and the fluctuation–dissipation ratio of every optimizer family against the exact
stationary law of a separable quadratic loss with Gaussian gradient noise.

L(θ) = ½ Σ h_i θ_i²; a micro-batch of size b has the gradient hθ + ξ_k with ξ_k ~ N(0, c/b)
(per-example covariance C = diag(c)), the batch gradient g = mean_k (hθ + ξ_k). Each optimizer
is simulated in float64 exactly as Keras applies it, on W independent walkers; after the burn-in
every walker takes one measuring step and the walkers' measurements are fed to the Thermometer
one after the other (its averages are then plain means over independent draws, and θ̄ — an EMA
of the earlier walkers' θ — is independent of the walker measured). Written as preconditioned
heavy-ball SGD, v ← μv + g, θ ← θ − αPv (docs/thermodynamics.md), coordinate i of the linear
system with constant P has the exact stationary temperature

    T_i = h_i Var θ_i = αP_i σ_i² (1 + μ) / ((1 − μ)(2(1 + μ) − αP_i h_i)),   σ_i² = c_i / B,

whose first-order term is the noise temperature (α/(1 − μ)) P_i σ_i² / 2. Tolerances are 5
standard errors from the walkers themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from ml.core.telemetry import THETA_MEAN_DECAY, Measurement, Thermometer

Z = 5.0
D, BATCH, MICRO = 4, 32, 4
H = np.linspace(1.0, 4.0, D)
C = np.linspace(0.5, 2.0, D)
BETA_1, BETA_2, RHO, EPS = 0.9, 0.999, 0.9, 1e-7


@dataclass
class Family:
    optimizer: str  # the Thermometer's name
    learning_rate: float
    momentum: float  # μ of the heavy-ball form
    steps: int


FAMILIES = {
    "sgd": Family("sgd", 0.1, 0.0, 300),
    "momentum": Family("sgd", 0.05, 0.5, 300),
    "rmsprop": Family("rmsprop", 0.005, 0.0, 400),
    "adam": Family("adam", 0.02, BETA_1, 400),
}


@dataclass
class Walkers:
    """W walkers' state after the burn-in, and what one measuring step measures on each."""

    theta: np.ndarray
    virial: np.ndarray  # (θ − θ̄)·g, θ̄ from earlier walkers
    velocity: np.ndarray  # vᵀPv after the step
    heat: np.ndarray
    p: np.ndarray  # P of the step, per walker and coordinate
    rate: float  # α
    measurements: list[Measurement]


def _update(name: str, state: dict[str, np.ndarray], g: np.ndarray, lr: float, t: int):
    """One Keras update of θ; returns (P, heavy-ball buffer v, α) of that update."""
    if name == "sgd":
        state["theta"] = state["theta"] - lr * g
        return np.ones_like(g), g, lr
    if name == "momentum":
        state["u"] = FAMILIES["momentum"].momentum * state["u"] - lr * g
        state["theta"] = state["theta"] + state["u"]
        return np.ones_like(g), -state["u"] / lr, lr
    if name == "rmsprop":
        state["v"] = RHO * state["v"] + (1 - RHO) * g * g
        p = 1 / np.sqrt(state["v"] + EPS)
        state["theta"] = state["theta"] - lr * p * g
        return p, g, lr
    state["m"] = BETA_1 * state["m"] + (1 - BETA_1) * g
    state["v"] = BETA_2 * state["v"] + (1 - BETA_2) * g * g
    p = math.sqrt(1 - BETA_2**t) / (np.sqrt(state["v"]) + EPS)
    rate = lr * (1 - BETA_1) / (1 - BETA_1**t)
    state["theta"] = state["theta"] - rate * p * state["m"] / (1 - BETA_1)
    return p, state["m"] / (1 - BETA_1), rate


def simulate(name: str, walkers: int, seed: int = 0) -> Walkers:
    family = FAMILIES[name]
    rng = np.random.default_rng(seed)
    small = BATCH // MICRO
    state = {k: np.zeros((walkers, D)) for k in ("theta", "u", "m", "v")}
    lr = family.learning_rate
    for t in range(1, family.steps):
        noise = rng.normal(size=(walkers, D)) * np.sqrt(C / BATCH)  # the mean of K draws
        _update(name, state, H * state["theta"] + noise, lr, t)
    # The measuring step: K micro-batches on each walker.
    theta = state["theta"].copy()
    micro_noise = rng.normal(size=(walkers, MICRO, D)) * np.sqrt(C / small)
    micro = H * theta[:, None, :] + micro_noise
    g = micro.mean(axis=1)
    xi = micro_noise.mean(axis=1)
    p, buffer, rate = _update(name, state, g, lr, family.steps)
    after = state["theta"]

    def batch_loss(q: np.ndarray) -> np.ndarray:
        return 0.5 * np.sum(H * q * q, axis=1) + np.sum(xi * q, axis=1)

    heat = batch_loss(theta) - batch_loss(after)
    mean, weight = np.zeros(D), 0.0
    virial = np.empty(walkers)
    measurements = []
    for w in range(walkers):
        virial[w] = (theta[w] - (mean / weight if weight else 0.0)) @ g[w]
        measurements.append(
            Measurement(
                step=w + 1,
                learning_rate=lr,
                batch_size=BATCH,
                micro_size=small,
                micro_sqnorm_mean=float(np.mean(np.sum(micro[w] ** 2, axis=1))),
                batch_sqnorm=float(g[w] @ g[w]),
                theta_dot_grad=float(virial[w]),
                velocity_sqnorm=float(np.sum(p[w] * buffer[w] ** 2)),
                heat=float(heat[w]),
                internal_energy=float(0.5 * np.sum(H * theta[w] ** 2)),
                theta_sample=theta[w],
                precond_micro_sqnorm_mean=float(np.mean(np.sum(p[w] * micro[w] ** 2, axis=1))),
                precond_batch_sqnorm=float(np.sum(p[w] * g[w] ** 2)),
                step_rate=rate,
                centered=weight > 0,
            )
        )
        mean = THETA_MEAN_DECAY * mean + (1 - THETA_MEAN_DECAY) * theta[w]
        weight = THETA_MEAN_DECAY * weight + (1 - THETA_MEAN_DECAY)
    velocity = np.sum(p * buffer**2, axis=1)
    return Walkers(theta, virial, velocity, heat, p, rate, measurements)


def thermometer_output(name: str, walkers: Walkers) -> dict[str, float | None]:
    family = FAMILIES[name]
    thermometer = Thermometer(
        optimizer=family.optimizer,
        momentum=family.momentum,
        n_params=D,
        sampled=D,
        decay=1 - 1e-12,  # plain means over the walkers
    )
    out: dict[str, float | None] = {}
    for m in walkers.measurements:
        out = thermometer.update(m)
    return out


def se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values)))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_temperatures_and_fdr_match_the_exact_stationary_law(name: str) -> None:
    family = FAMILIES[name]
    walkers = simulate(name, walkers=4000)
    out = thermometer_output(name, walkers)
    mu, alpha = family.momentum, walkers.rate
    sigma2 = C / BATCH
    # The exact per-coordinate temperatures, h_i Var θ_i, from the walkers (their spread gives
    # the standard error of the average).
    per_walker = np.mean(H * walkers.theta**2, axis=1)
    t_exact, t_exact_se = float(per_walker.mean()), se(per_walker)
    # T_virial is ⟨(θ − θ̄)·g⟩/d: the exact average.
    t_virial = out["temperature_virial"]
    assert abs(t_virial - t_exact) < Z * math.hypot(se(walkers.virial) / D, t_exact_se)
    # ... and the law above gives the same average (P: its mean over the walkers).
    p = walkers.p.mean(axis=0)
    law = alpha * p * sigma2 * (1 + mu) / ((1 - mu) * (2 * (1 + mu) - alpha * p * H))
    assert abs(law.mean() - t_exact) < Z * t_exact_se + law_spread(walkers, alpha, mu)
    # T_noise is the law's first-order term: each T_i times (1 − αP_i h_i / (2(1 + μ))).
    first_order = float(np.mean(law * (1 - alpha * p * H / (2 * (1 + mu)))))
    t_noise = out["temperature_noise"]
    noise_se = noise_temperature_se(walkers, alpha, mu)
    assert abs(t_noise - first_order) < Z * noise_se + law_spread(walkers, alpha, mu)
    # fdr_ratio = ⟨(θ − θ̄)·g⟩ / ((α/2)(1 + μ)⟨vᵀPv⟩) → 1.
    scale = 0.5 * alpha * (1 + mu)
    fdr_se = se(walkers.virial - scale * walkers.velocity) / (scale * walkers.velocity.mean())
    assert abs(out["fdr_ratio"] - 1) < Z * fdr_se, (out["fdr_ratio"], fdr_se)
    # Heat: ⟨Q⟩ = α tr(PΣ)/B when P does not depend on this step's noise; RMSprop's P does
    # (Keras's ρ = 0.9 puts 10% of its v on this step's g²), which lowers ⟨Q⟩.
    heat_exact = alpha * float(np.mean(np.sum(walkers.p * C, axis=1))) / BATCH
    if name != "rmsprop":
        assert abs(out["heat"] - heat_exact) < Z * se(walkers.heat)
    assert out["grad_noise_scale"] is not None and out["grad_noise_scale_lower_bound"] in (0, 1)


def law_spread(walkers: Walkers, alpha: float, mu: float) -> float:
    """The law holds for a constant P; the walkers' P differ (adaptive optimizers). The change
    of the law over the walkers' P (5th to 95th percentile), a bound on that approximation."""
    sigma2 = C / BATCH

    def law(p: np.ndarray) -> float:
        return float(
            np.mean(alpha * p * sigma2 * (1 + mu) / ((1 - mu) * (2 * (1 + mu) - alpha * p * H)))
        )

    low, high = np.percentile(walkers.p, [5, 95], axis=0)
    return abs(law(high) - law(low))


def noise_temperature_se(walkers: Walkers, alpha: float, mu: float) -> float:
    """Standard error of the noise temperature's estimate over the walkers."""
    per_walker = []
    for m in walkers.measurements:
        big, small = m.batch_size, m.micro_size
        trace = (m.precond_micro_sqnorm_mean - m.precond_batch_sqnorm) / (1 / small - 1 / big)
        per_walker.append(alpha / (1 - mu) / (2 * big) * trace / D)
    return se(np.array(per_walker))
