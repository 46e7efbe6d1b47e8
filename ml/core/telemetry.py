"""Thermodynamic training telemetry (THERMODYNAMICS.md section A), in plain NumPy.

The training loop measures raw quantities on a telemetry step (micro-batch gradient norms, plain
and weighted by the optimizer's preconditioner P, (θ − θ̄)·g, the heavy-ball buffer, the two-pass
heat, a sample of the parameters) and hands them to
:class:`Thermometer`, which keeps numerators and denominators as separate bias-corrected
exponential moving averages and divides only when it reports. Units: k_B = 1, energies in the
units of the training loss (a mean over the batch of the per-example loss). Every optimizer is
read as preconditioned heavy-ball SGD; docs/thermodynamics.md derives each formula.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

# θ̄, the running mean of θ that `temperature_virial` and `fdr_ratio` centre on: an EMA over
# measuring points, kept in the training graph (it is as large as θ).
THETA_MEAN_DECAY = 0.9
# `equilibrium`: the fluctuation–dissipation relation tested over the last EQUILIBRIUM_WINDOW
# measuring points (at least EQUILIBRIUM_MIN_POINTS); see EquilibriumTest.
EQUILIBRIUM_WINDOW = 20
EQUILIBRIUM_MIN_POINTS = 5
EQUILIBRIUM_Z = 2.0
EQUILIBRIUM_TOLERANCE = 0.5


def gradient_noise_parts(
    micro_sqnorm_mean: float, batch_sqnorm: float, batch_size: int, micro_size: int
) -> tuple[float, float]:
    """Unbiased |G|² and tr Σ from K micro-batch gradients (McCandlish et al. 2018, App. A).

    `micro_sqnorm_mean` is S_b = mean_k |g_k|² over micro-batches of size b; `batch_sqnorm` is
    |g_B|² of their mean (the batch of size B = K b).
    """
    big, small = float(batch_size), float(micro_size)
    if not small < big:
        raise ValueError("micro-batches must be smaller than the batch")
    g_sq = (big * batch_sqnorm - small * micro_sqnorm_mean) / (big - small)
    trace = (micro_sqnorm_mean - batch_sqnorm) / (1.0 / small - 1.0 / big)
    return g_sq, trace


def nominal_temperature(learning_rate: float, batch_size: int) -> float:
    """η / 2B, the control parameter of SGD's stochastic differential equation."""
    return learning_rate / (2.0 * batch_size)


def noise_temperature(
    learning_rate: float, momentum: float, batch_size: int, trace_sigma: float, n_params: int
) -> float:
    """(η_eff / 2B) tr Σ / d with η_eff = η / (1 − μ) (Mandt, Hoffman & Blei 2017).

    For a preconditioned optimizer pass its rate α and tr(PΣ) = Σ_i P_i Σ_ii."""
    return learning_rate / (1.0 - momentum) / (2.0 * batch_size) * trace_sigma / n_params


def gaussian_entropy(variances: np.ndarray, scale: float = 1.0) -> float:
    """½ Σ ln(2πe s_i²), times `scale` (d / sampled coordinates)."""
    v = np.maximum(np.asarray(variances, dtype=np.float64), np.finfo(np.float64).tiny)
    return float(scale * 0.5 * np.sum(np.log(2 * math.pi * math.e * v)))


class Ema:
    """A bias-corrected exponential moving average."""

    def __init__(self, decay: float) -> None:
        self.decay, self.value, self.weight = decay, 0.0, 0.0

    def update(self, x: float) -> None:
        self.value = self.decay * self.value + (1 - self.decay) * x
        self.weight = self.decay * self.weight + (1 - self.decay)

    @property
    def mean(self) -> float | None:
        return self.value / self.weight if self.weight > 0 else None


class WeightEntropy:
    """Welford variance of θ − EMA(θ) on a fixed coordinate sample; entropy of that Gaussian."""

    def __init__(self, n_params: int, sampled: int, decay: float = 0.9) -> None:
        self.scale = n_params / sampled
        self.decay = decay
        self.center: np.ndarray | None = None
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, theta: np.ndarray) -> float | None:
        theta = np.asarray(theta, dtype=np.float64)
        if self.center is None:
            self.center = theta.copy()
            return None
        self.center = self.decay * self.center + (1 - self.decay) * theta
        deviation = theta - self.center
        self.count += 1
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = deviation.copy(), np.zeros_like(deviation)
            return None
        delta = deviation - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (deviation - self.mean)
        if self.count < 2:
            return None
        return gaussian_entropy(self.m2 / (self.count - 1), self.scale)

    def state(self) -> dict[str, object]:
        return {"center": self.center, "count": self.count, "mean": self.mean, "m2": self.m2}

    def restore(self, state: dict[str, object]) -> None:
        self.center = state["center"]  # type: ignore[assignment]
        self.count = int(state["count"])  # type: ignore[call-overload]
        self.mean = state["mean"]  # type: ignore[assignment]
        self.m2 = state["m2"]  # type: ignore[assignment]


class EquilibriumTest:
    """Whether ⟨(θ − θ̄)·g⟩ = (α/2)(1 + μ)⟨vᵀPv⟩ holds over the recent measuring points (Yaida
    2018), tested as SASA does (Lang, Xiao & Zhang 2019): with the residuals r = O_L − O_R,
    O_L = (θ − θ̄)·g and O_R = (α/2)(1 + μ) vᵀPv, of the last EQUILIBRIUM_WINDOW points, the
    confidence interval mean r ± z·SE must lie within ±δ·mean O_R (z = EQUILIBRIUM_Z,
    δ = EQUILIBRIUM_TOLERANCE): the relation holds to δ, resolved by its standard error. A window
    too noisy to resolve δ says 0. The statistic is t = mean r / SE. Points are taken as
    independent (they are `every_steps` apart)."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=EQUILIBRIUM_WINDOW)

    def reset(self) -> None:
        self.samples.clear()

    def update(self, left: float | None, right: float | None) -> tuple[float | None, float | None]:
        """(equilibrium 0/1, t), or (None, None) while the window is too short."""
        if left is not None and right is not None and math.isfinite(left - right):
            self.samples.append((left, right))
        n = len(self.samples)
        if n < EQUILIBRIUM_MIN_POINTS:
            return None, None
        pairs = np.asarray(self.samples)
        r = pairs[:, 0] - pairs[:, 1]
        se = float(r.std(ddof=1)) / math.sqrt(n)
        mean, scale = float(r.mean()), float(pairs[:, 1].mean())
        holds = abs(mean) + EQUILIBRIUM_Z * se < EQUILIBRIUM_TOLERANCE * scale
        return (1.0 if holds else 0.0), (mean / se if se > 0 else None)


@dataclass
class Measurement:
    """Raw quantities of one telemetry step (all floats on the host).

    Every optimizer is read as preconditioned heavy-ball SGD, v ← μv + g, θ ← θ − α P v
    (docs/thermodynamics.md): the `precond_*` norms weight each coordinate by P_i (None: P = 1),
    `velocity_sqnorm` is vᵀPv and `step_rate` is α (None: the learning rate)."""

    step: int
    learning_rate: float
    batch_size: int
    micro_size: int
    micro_sqnorm_mean: float  # S_b
    batch_sqnorm: float  # |g_B|²
    theta_dot_grad: float  # (θ − θ̄) · g_B, weight decay included in g
    velocity_sqnorm: float | None  # vᵀPv of the heavy-ball buffer; None when not measured
    heat: float | None  # L_B(θ_t) − L_B(θ_{t+1}), same batch and random draws
    internal_energy: float  # window mean of the mini-batch loss
    theta_sample: np.ndarray
    injected_temperature: float | None = None  # SGLD's T
    precond_micro_sqnorm_mean: float | None = None  # mean_k g_kᵀ P g_k
    precond_batch_sqnorm: float | None = None  # g_Bᵀ P g_B
    step_rate: float | None = None  # α
    centered: bool = True  # False while θ̄ has no sample yet: theta_dot_grad is then unusable


class Thermometer:
    """Turns measurements into the metric points of section A."""

    def __init__(
        self,
        *,
        optimizer: str,
        momentum: float,
        n_params: int,
        sampled: int,
        dampening: float = 0.0,
        decay: float = 0.9,
    ) -> None:
        self.optimizer = optimizer
        self.momentum = momentum  # μ of the heavy-ball form (adam: β₁; rmsprop: 0)
        self.dampening = dampening
        self.n_params = n_params
        self.g_sq, self.trace, self.p_trace = Ema(decay), Ema(decay), Ema(decay)
        self.batch_sq = Ema(decay)
        self.virial, self.velocity, self.heat = Ema(decay), Ema(decay), Ema(decay)
        self.entropy = WeightEntropy(n_params, sampled)
        self.entropy_origin: float | None = None
        self.equilibrium = EquilibriumTest()

    def _emas(self) -> dict[str, Ema]:
        return {
            "g_sq": self.g_sq,
            "trace": self.trace,
            "p_trace": self.p_trace,
            "batch_sq": self.batch_sq,
            "virial": self.virial,
            "velocity": self.velocity,
            "heat": self.heat,
        }

    def state(self) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        """JSON-safe scalars and arrays, so that a resumed run continues the same averages."""
        scalars: dict[str, object] = {
            name: [ema.value, ema.weight] for name, ema in self._emas().items()
        }
        entropy = self.entropy.state()
        scalars["entropy_count"] = entropy["count"]
        scalars["entropy_origin"] = self.entropy_origin
        scalars["equilibrium_samples"] = [list(p) for p in self.equilibrium.samples]
        arrays = {
            f"entropy_{k}": np.asarray(v) for k, v in entropy.items() if isinstance(v, np.ndarray)
        }
        return scalars, arrays

    def restore(self, scalars: dict[str, object], arrays: dict[str, np.ndarray]) -> None:
        for name, ema in self._emas().items():
            if name in scalars:  # a checkpoint written before an average existed starts it afresh
                ema.value, ema.weight = (float(x) for x in scalars[name])  # type: ignore[attr-defined]
        self.entropy.restore(
            {
                "count": scalars["entropy_count"],
                **{k: arrays.get(f"entropy_{k}") for k in ("center", "mean", "m2")},
            }
        )
        self.equilibrium.reset()
        for left, right in scalars.get("equilibrium_samples", []):  # type: ignore[attr-defined]
            self.equilibrium.samples.append((float(left), float(right)))
        origin = scalars.get("entropy_origin")
        self.entropy_origin = None if origin is None else float(origin)  # type: ignore[arg-type]

    def _accumulate(self, m: Measurement) -> float | None:
        """Feed the averages; the weight entropy of this step."""
        g_sq, trace = gradient_noise_parts(
            m.micro_sqnorm_mean, m.batch_sqnorm, m.batch_size, m.micro_size
        )
        self.g_sq.update(g_sq)
        self.trace.update(trace)
        self.batch_sq.update(m.batch_sqnorm)
        if m.precond_micro_sqnorm_mean is not None and m.precond_batch_sqnorm is not None:
            p_trace = gradient_noise_parts(
                m.precond_micro_sqnorm_mean, m.precond_batch_sqnorm, m.batch_size, m.micro_size
            )[1]
        else:
            p_trace = trace
        self.p_trace.update(p_trace)
        if m.centered:
            self.virial.update(m.theta_dot_grad)
        if m.velocity_sqnorm is not None:
            self.velocity.update(m.velocity_sqnorm)
        if m.heat is not None:
            self.heat.update(m.heat)
        entropy = self.entropy.update(m.theta_sample)
        if entropy is not None and self.entropy_origin is None:
            self.entropy_origin = entropy
        return entropy

    def _noise_scale(self) -> tuple[float | None, float]:
        """B_simple = tr Σ / |G|², or, when the |G|² estimate is not positive, the lower bound
        tr Σ / E|g_B|² (E|g_B|² = |G|² + tr Σ / B ≥ |G|²), flagged 1."""
        g_mean, trace_mean, batch_sq = self.g_sq.mean, self.trace.mean, self.batch_sq.mean
        if g_mean is None or trace_mean is None:
            return None, 0.0
        if g_mean > 0 and trace_mean > 0:
            return trace_mean / g_mean, 0.0
        if batch_sq is None or batch_sq <= 0:
            return None, 1.0
        return max(trace_mean, 0.0) / batch_sq, 1.0

    def update(self, m: Measurement) -> dict[str, float | None]:
        entropy = self._accumulate(m)
        d, mu = self.n_params, self.momentum
        rate = m.learning_rate if m.step_rate is None else m.step_rate
        out: dict[str, float | None] = {
            "internal_energy": m.internal_energy,
            "lr": m.learning_rate,
            "temperature_nominal": nominal_temperature(m.learning_rate, m.batch_size),
        }
        out["grad_noise_scale"], out["grad_noise_scale_lower_bound"] = self._noise_scale()
        p_trace = self.p_trace.mean
        t_noise = (
            noise_temperature(rate, mu, m.batch_size, p_trace, d) if p_trace is not None else None
        )
        out["temperature_noise"] = t_noise
        virial = self.virial.mean
        t_virial = virial / d if virial is not None else None
        out["temperature_virial"] = t_virial
        if m.injected_temperature is not None:
            out["temperature_injected"] = m.injected_temperature
        velocity = self.velocity.mean
        scale = (rate / 2) * (1 + mu) / (1 - self.dampening)
        usable_fdr = virial is not None and velocity is not None and velocity > 0
        out["fdr_ratio"] = virial / (scale * velocity) if usable_fdr else None  # type: ignore[operator]
        sides = (
            (m.theta_dot_grad, scale * m.velocity_sqnorm)
            if m.centered and m.velocity_sqnorm is not None
            else (None, None)
        )
        out["equilibrium"], out["equilibrium_statistic"] = self.equilibrium.update(*sides)
        delta_s = (
            entropy - self.entropy_origin
            if entropy is not None and self.entropy_origin is not None
            else None
        )
        out["weight_entropy"] = delta_s
        temperature = _positive(t_noise) or _positive(t_virial)
        reference = t_noise if t_noise is not None else t_virial
        out["free_energy"] = (
            m.internal_energy - reference * delta_s
            if delta_s is not None and reference is not None
            else None
        )
        heat = self.heat.mean
        out["heat"] = heat
        usable = temperature is not None and heat is not None
        out["entropy_production"] = heat / temperature if usable else None  # type: ignore[operator]
        if usable and p_trace is not None:
            # ⟨Q⟩ = α tr(PΣ)/B at stationarity for every heavy-ball form (docs/thermodynamics.md).
            excess = heat - rate * p_trace / m.batch_size  # type: ignore[operator]
            out["entropy_production_excess"] = excess / temperature  # type: ignore[operator]
        else:
            out["entropy_production_excess"] = None
        return out


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None
