"""The parameters of the Langevin kind and the exact answers its estimates are held against.

γ dx = −U'(x) dt + √(2γT) dW with U = κx²/2 (harmonic, the Ornstein–Uhlenbeck process) or
U = b((x/d)² − 1)² (double well). :func:`coefficients` gives the update of one step.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ml.core.spec import StrictModel
from ml.simulation.shared import check_positive, record_every_field

MAX_WALKERS = 5_000_000
# Peak bytes per walker: positions plus the temporaries of one metric point (numba: ~16
# measured, rounded up); TensorFlow's while loop keeps a few more copies (~140 measured).
BYTES_PER_WALKER = {"numba": 48, "tensorflow": 140}
MAX_STEPS = 100_000_000
MAX_ORACLE_GRID = 2000
BOLTZMANN_GRID = 20_001
# Beyond U = 40 T the Boltzmann weight is below 5e-18: the oracles integrate inside that range.
ORACLE_ENERGY_RANGE = 40.0


class LangevinParams(StrictModel):
    potential: Literal["harmonic", "double_well"] = "harmonic"
    stiffness: float = Field(1.0, description="κ of U = κx²/2 (harmonic).")
    barrier: float = Field(1.0, description="b of U = b((x/d)² − 1)² (double_well).")
    well_distance: float = Field(1.0, description="d of U = b((x/d)² − 1)² (double_well).")
    friction: float = Field(1.0, description="γ; the harmonic relaxation time is τ = γ/κ.")
    temperature: float = Field(1.0, description="T of the bath (k_B = 1).")
    dt: float = Field(0.01, gt=0, description="Time step h.")
    steps: int = Field(1000, ge=2, description="Steps; the second half measures.")
    walkers: int = Field(10000, ge=1, description="Independent walkers.")
    integrator: Literal["exact", "euler_maruyama"] | None = Field(
        None, description="Default: `exact` for harmonic, `euler_maruyama` for double_well."
    )
    initial_position: float = Field(0.0, description="Every walker starts here.")
    seed: int = Field(0, ge=0)
    record_every: int | None = record_every_field()
    backend: Literal["numba", "tensorflow"] = Field(
        "numba",
        description="`numba`: parallel CPU kernel, the fastest choice on a CPU. `tensorflow`: "
        "the same dynamics, blocks and result keys in TensorFlow (float64, stateless seeded "
        "draws); worth it for large walker counts (10⁶ and up) on a job that has a GPU "
        "(`resources.gpu`), which it uses.",
    )

    @model_validator(mode="after")
    def _check(self) -> LangevinParams:
        positive = ("stiffness", "barrier", "well_distance", "friction", "temperature", "dt")
        check_positive(self, positive)
        if self.integrator is None:
            self.integrator = "exact" if self.potential == "harmonic" else "euler_maruyama"
        if self.integrator == "exact" and self.potential != "harmonic":
            raise ValueError(
                "integrator 'exact' solves only the harmonic potential; "
                "use 'euler_maruyama' for double_well"
            )
        if self.integrator == "euler_maruyama" and self.dt >= 2 * self.relaxation_time:
            where = "τ = friction/stiffness"
            if self.potential == "double_well":
                where = "τ = friction·well_distance²/(8·barrier), the relaxation time in a well"
            raise ValueError(
                f"Euler–Maruyama is unstable for dt >= 2τ ({where}; dt = {self.dt:g}, "
                f"τ = {self.relaxation_time:g}); lower dt"
                + (" or use integrator 'exact'" if self.potential == "harmonic" else "")
            )
        if self.walkers > MAX_WALKERS:
            raise ValueError(
                f"walkers = {self.walkers} exceeds {MAX_WALKERS:,}: each walker keeps up to "
                f"{BYTES_PER_WALKER[self.backend]} bytes in memory with the {self.backend} "
                f"backend, so a job is limited to about "
                f"{MAX_WALKERS * BYTES_PER_WALKER[self.backend] // 2**20} MiB"
            )
        if self.steps > MAX_STEPS:
            raise ValueError(f"steps = {self.steps} exceeds the limit of {MAX_STEPS:,}")
        return self

    @property
    def curvature(self) -> float:
        """U'' at the minimum (the wells' bottoms for the double well)."""
        if self.potential == "harmonic":
            return self.stiffness
        return 8 * self.barrier / self.well_distance**2

    @property
    def relaxation_time(self) -> float:
        return self.friction / self.curvature

    def energy(self, x: np.ndarray) -> np.ndarray:
        if self.potential == "harmonic":
            return 0.5 * self.stiffness * x * x
        return self.barrier * ((x / self.well_distance) ** 2 - 1.0) ** 2


def coefficients(p: LangevinParams) -> tuple[int, float, float, float]:
    """(mode, c1, c2, c3) of :func:`advance` for these params."""
    h, gamma, temp = p.dt, p.friction, p.temperature
    if p.integrator == "exact":
        a = math.exp(-h / p.relaxation_time)
        return 0, a, math.sqrt(temp / p.stiffness * -math.expm1(-2 * h / p.relaxation_time)), 0.0
    noise = math.sqrt(2 * temp * h / gamma)
    if p.potential == "harmonic":
        return 0, 1.0 - h / p.relaxation_time, noise, 0.0
    return 1, 4 * p.barrier * h / (gamma * p.well_distance**2), noise, 1 / p.well_distance**2


# --- exact answers ---------------------------------------------------------------------------


def _moments(p: LangevinParams, density: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(variance, mean energy) of a density sampled on an even grid."""
    w = density / density.sum()
    mean = float(w @ x)
    return float(w @ (x - mean) ** 2), float(w @ p.energy(x))


def _oracle_range(p: LangevinParams) -> float:
    reach = ORACLE_ENERGY_RANGE * p.temperature
    if p.potential == "harmonic":
        return math.sqrt(2 * reach / p.stiffness)
    return p.well_distance * math.sqrt(1 + math.sqrt(reach / p.barrier))


def boltzmann_moments(p: LangevinParams) -> tuple[float, float]:
    """(variance, mean energy) of the Boltzmann density e^{−U/T}/Z: the continuum answer."""
    if p.potential == "harmonic":
        return p.temperature / p.stiffness, p.temperature / 2
    x = np.linspace(-_oracle_range(p), _oracle_range(p), BOLTZMANN_GRID)
    # the trapezoid rule is spectrally accurate for a smooth density that vanishes at the ends
    return _moments(p, np.exp(-p.energy(x) / p.temperature), x)


def integrator_moments(p: LangevinParams) -> tuple[float | None, float | None]:
    """(variance, mean energy) of the integrator's own stationary law.

    For the double well this is the fixed point of the Euler–Maruyama transition kernel on a
    grid fine enough for its Gaussian step (None when that grid would exceed `MAX_ORACLE_GRID`).
    """
    if p.integrator == "exact":
        return boltzmann_moments(p)
    if p.potential == "harmonic":
        variance = p.temperature / p.stiffness / (1 - p.dt / (2 * p.relaxation_time))
        return variance, p.stiffness * variance / 2
    _, c1, c2, c3 = coefficients(p)
    edge = _oracle_range(p)
    n = math.ceil(2 * edge / (c2 / 8)) + 1
    if n > MAX_ORACLE_GRID:
        return None, None
    x = np.linspace(-edge, edge, n)
    drift = x + c1 * x * (1 - c3 * x * x)
    kernel = np.exp(-0.5 * ((x[:, None] - drift[None, :]) / c2) ** 2)  # kernel[to, from]
    mass = kernel.sum(axis=0, keepdims=True) * (x[1] - x[0]) / (c2 * math.sqrt(2 * math.pi))
    if mass.min() < 0.5:  # steps from the grid's edge land outside it
        return None, None
    kernel /= kernel.sum(axis=0, keepdims=True)
    system = np.eye(n) - kernel
    system[0, :] = 1.0  # replace one balance equation by the normalisation
    rhs = np.zeros(n)
    rhs[0] = 1.0
    density = np.clip(np.linalg.solve(system, rhs), 0, None)
    return _moments(p, density, x)
