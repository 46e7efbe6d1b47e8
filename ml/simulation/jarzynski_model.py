"""The protocols of the Jarzynski kind, their parameters and exact answers.

A protocol is the schedule λ_n, n = 0..steps, of trap centres and stiffnesses (harmonic
protocols) or of the upper level (the two-level system); ΔF and ⟨W⟩ of exactly the simulated
discrete protocol follow from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ml.core.spec import StrictModel
from ml.simulation.shared import check_positive

MAX_PATHS = 2_000_000  # a handful of float64 arrays of this length: about 80 MB
MAX_STEPS = 1_000_000


class JarzynskiParams(StrictModel):
    protocol: Literal["drag", "stiffness", "landauer"] = "drag"
    temperature: float = Field(1.0, description="T of the bath (k_B = 1).")
    friction: float = Field(1.0, description="γ; relaxation time τ = γ/κ.")
    stiffness: float = Field(1.0, description="κ (κ0 of the stiffness protocol).")
    final_stiffness: float = Field(2.0, description="κ1 of the stiffness protocol.")
    speed: float = Field(1.0, description="v of the drag protocol.")
    energy_max: float = Field(6.0, description="Final level ε of the landauer protocol.")
    duration: float = Field(2.0, description="Protocol time t_f.")
    dt: float = Field(0.01, description="Step; steps = round(duration/dt), dt = duration/steps.")
    paths: int = Field(10000, ge=2, description="Independent paths.")
    switch: Literal["linear", "sudden"] = Field(
        "linear",
        description="λ ramped linearly over `duration`, or switched at t = 0 then relaxed.",
    )
    crooks: bool = Field(
        False, description="Also run the reverse protocol and fit the Crooks slope (1/T)."
    )
    seed: int = Field(0, ge=0)
    backend: Literal["numpy", "tensorflow"] = Field(
        "numpy",
        description="`numpy`: vectorised over paths, the right choice on a CPU. `tensorflow`: "
        "the same protocol in TensorFlow (float64, stateless seeded draws), each stretch "
        "between metric points in one compiled loop; worth it for many paths (10⁵ and up) on a "
        "job that has a GPU (`resources.gpu`), which it uses.",
    )

    @model_validator(mode="after")
    def _check(self) -> JarzynskiParams:
        positive = ("temperature", "friction", "stiffness", "final_stiffness", "duration", "dt")
        check_positive(self, positive)
        if self.steps < 1:
            raise ValueError(f"duration / dt must give at least one step (dt = {self.dt:g})")
        if self.steps > MAX_STEPS:
            raise ValueError(f"duration / dt gives {self.steps} steps; the limit is {MAX_STEPS:,}")
        if self.paths > MAX_PATHS:
            raise ValueError(
                f"paths = {self.paths} exceeds {MAX_PATHS:,}: every path keeps a few float64 "
                "values in memory, and a job is limited to about 80 MB of them"
            )
        return self

    @property
    def steps(self) -> int:
        return round(self.duration / self.dt)

    @property
    def step(self) -> float:
        return self.duration / self.steps


@dataclass(frozen=True)
class Schedule:
    """λ_n for n = 0..steps: trap centres and stiffnesses, or the upper level."""

    centers: np.ndarray
    stiffnesses: np.ndarray
    levels: np.ndarray


def schedule(p: JarzynskiParams, reverse: bool = False) -> Schedule:
    if p.switch == "linear":
        fraction = np.arange(p.steps + 1) / p.steps
    else:
        fraction = np.minimum(np.arange(p.steps + 1), 1).astype(np.float64)
    if reverse:
        fraction = 1.0 - fraction
    constant = np.ones(p.steps + 1)
    zero = np.zeros(p.steps + 1)
    if p.protocol == "drag":
        return Schedule(p.speed * p.duration * fraction, p.stiffness * constant, zero)
    if p.protocol == "stiffness":
        kappa = p.stiffness + (p.final_stiffness - p.stiffness) * fraction
        return Schedule(zero, kappa, zero)
    return Schedule(zero, p.stiffness * constant, p.energy_max * fraction)


def free_energy(p: JarzynskiParams, s: Schedule) -> np.ndarray:
    """ΔF(λ_n) − ΔF(λ_0) along the schedule."""
    t = p.temperature
    if p.protocol == "landauer":
        f = -t * np.logaddexp(0.0, -s.levels / t)
        return f - f[0]
    return 0.5 * t * np.log(s.stiffnesses / s.stiffnesses[0])


def upper_probability(p: JarzynskiParams, level: np.ndarray | float) -> Any:
    """Equilibrium occupation of the upper level, 1/(1 + e^{ε/T})."""
    return 0.5 * (1.0 - np.tanh(np.asarray(level) / (2 * p.temperature)))


# --- exact answers of the discrete protocol ------------------------------------------------


def mean_work_exact(p: JarzynskiParams, s: Schedule) -> float:
    """⟨W⟩ of exactly the simulated protocol, from the moments' recursions."""
    h, t, total = p.step, p.temperature, 0.0
    if p.protocol == "landauer":
        decay = math.exp(-h * p.stiffness / p.friction)
        upper = float(upper_probability(p, s.levels[0]))
        for n in range(p.steps):
            total += upper * (s.levels[n + 1] - s.levels[n])
            target = float(upper_probability(p, s.levels[n + 1]))
            upper = target + (upper - target) * decay
        return total
    lag, variance = 0.0, t / s.stiffnesses[0]  # ⟨centre − x⟩ and Var x
    for n in range(p.steps):
        k0, k1 = s.stiffnesses[n], s.stiffnesses[n + 1]
        c0, c1 = s.centers[n], s.centers[n + 1]
        # ⟨k1 (x − c1)² − k0 (x − c0)²⟩ / 2 with ⟨x − c⟩ = −lag
        total += 0.5 * (k1 * ((lag + c1 - c0) ** 2 + variance) - k0 * (lag**2 + variance))
        a = math.exp(-k1 * h / p.friction)
        lag = a * (lag + c1 - c0)
        variance = a * a * variance + t / k1 * (1 - a * a)
    return total


def drag_mean_work_continuum(p: JarzynskiParams) -> float:
    """γ v² [t_f − τ (1 − e^{−t_f/τ})], the continuum limit of the drag protocol."""
    tau = p.friction / p.stiffness
    return p.friction * p.speed**2 * (p.duration - tau * -math.expm1(-p.duration / tau))


def exponential_work_variance_is_finite(p: JarzynskiParams, s: Schedule) -> bool:
    """Whether Var e^{−W/T} is finite, i.e. ⟨e^{−2W/T}⟩ < ∞.

    Only the stiffness protocol can fail: weighting the Gaussian state by e^{−2W/T} adds
    2Δκ/T to its precision at each switch, and the moment diverges when the precision reaches
    zero (for a sudden quench, when κ1 ≤ κ0/2). Drag work is Gaussian and two-level work bounded.
    """
    if p.protocol != "stiffness":
        return True
    precision = s.stiffnesses[0] / p.temperature
    for n in range(p.steps):
        k1 = s.stiffnesses[n + 1]
        precision += 2 * (k1 - s.stiffnesses[n]) / p.temperature
        if precision <= 0:
            return False
        a2 = math.exp(-2 * k1 * p.step / p.friction)
        precision = 1 / (a2 / precision + p.temperature / k1 * (1 - a2))
    return True
