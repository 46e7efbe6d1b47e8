"""Overdamped Langevin dynamics of many independent walkers, as a job kind.

γ dx = −U'(x) dt + √(2γT) dW with U = κx²/2 (harmonic, the Ornstein–Uhlenbeck process) or
U = b((x/d)² − 1)² (double well). The exact update of the harmonic case is
x' = a x + √((T/κ)(1 − a²)) ξ with a = e^{−h/τ}, τ = γ/κ; Euler–Maruyama's own stationary
variance is (T/κ)/(1 − h/(2τ)). With no work done on the walkers the heat given to the bath is
−Δ⟨U⟩, so `entropy_production` is its rate over T.

Stationary statistics use the second half of the steps. Walkers are split into `RNG_BLOCKS`
fixed blocks, each with its own random stream: the blocks make the result independent of the
thread count and are the independent replicates of the standard errors. `backend: tensorflow`
steps the walkers with `ml.simulation_tf` instead (same blocks, same summaries).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol

import numba
import numpy as np
from numba import uint64
from pydantic import Field, model_validator

from ml.core.registry import register_kind
from ml.core.reporting import JobFailed, Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, StrictModel

MAX_WALKERS = 5_000_000
# Peak bytes per walker: positions plus the temporaries of one metric point (numba: ~16
# measured, rounded up); TensorFlow's while loop keeps a few more copies (~140 measured).
BYTES_PER_WALKER = {"numba": 48, "tensorflow": 140}
MAX_STEPS = 100_000_000
MAX_RECORDED_POINTS = 1000
RNG_BLOCKS = 64
BURN_IN_RELAXATION_TIMES = 5.0
ACF_WALKERS = 1000
ACF_GROUPS = 20
MAX_ACF_LAGS = 100
MAX_ORACLE_GRID = 2000
BOLTZMANN_GRID = 20_001
TF_STREAM = 1  # the label of the walkers' stateless stream, see `ml.simulation_tf.stream_key`
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
    record_every: int | None = Field(
        None, ge=1, description="Record every n-th step (default: at most 1000 points)."
    )
    backend: Literal["numba", "tensorflow"] = Field(
        "numba",
        description="`numba`: parallel CPU kernel, the fastest choice on a CPU. `tensorflow`: "
        "the same dynamics, blocks and result keys in TensorFlow (float64, stateless seeded "
        "draws); worth it for large walker counts (10⁶ and up) on a job that has a GPU "
        "(`resources.gpu`), which it uses.",
    )

    @model_validator(mode="after")
    def _check(self) -> LangevinParams:
        for name in ("stiffness", "barrier", "well_distance", "friction", "temperature", "dt"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (got {getattr(self, name)})")
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


class LangevinSpec(JobSpec):
    kind: Literal["langevin"]
    params: LangevinParams = Field(default_factory=LangevinParams)


LangevinSpec.example = {
    "kind": "langevin",
    "name": "ou-euler-maruyama",
    "params": {
        "potential": "harmonic",
        "stiffness": 1.0,
        "friction": 1.0,
        "temperature": 1.0,
        "dt": 0.01,
        "steps": 2000,
        "walkers": 10000,
        "integrator": "euler_maruyama",
        "seed": 0,
    },
}


# --- random numbers: xoshiro256+ streams and Marsaglia–Tsang's 256-layer ziggurat -------------


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy's 52-bit tables for the standard normal (Marsaglia & Tsang 2000)."""
    scale = 2.0**52
    dn = tn = 3.6541528853610088
    vn = 0.00492867323399
    ki = np.zeros(256, np.uint64)
    wi = np.zeros(256)
    fi = np.zeros(256)
    q = vn / math.exp(-0.5 * dn * dn)
    ki[0] = int(dn / q * scale)
    wi[0], wi[255] = q / scale, dn / scale
    fi[0], fi[255] = 1.0, math.exp(-0.5 * dn * dn)
    for i in range(254, 0, -1):
        dn = math.sqrt(-2.0 * math.log(vn / dn + math.exp(-0.5 * dn * dn)))
        ki[i + 1] = int(dn / tn * scale)
        tn = dn
        fi[i] = math.exp(-0.5 * dn * dn)
        wi[i] = dn / scale
    return ki, wi, fi


_KI, _WI, _FI = _ziggurat_tables()
_ZIGGURAT_R = 3.6541528853610088


def seed_states(seed: int, streams: int) -> np.ndarray:
    """Independent xoshiro256 states, one row of four words per stream."""
    states = np.random.SeedSequence(seed).generate_state(4 * streams, np.uint64)
    states = states.reshape(streams, 4)
    states[np.all(states == 0, axis=1), 0] = 1  # the all-zero state is xoshiro's fixed point
    return states


@numba.njit(inline="always")
def _next(st: np.ndarray) -> Any:
    s0, s1, s2, s3 = st[0], st[1], st[2], st[3]
    result = s0 + s3
    t = s1 << uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 << uint64(45)) | (s3 >> uint64(19))
    st[0], st[1], st[2], st[3] = s0, s1, s2, s3
    return result


@numba.njit(inline="always")
def _uniform(st: np.ndarray) -> float:
    return (_next(st) >> uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always")
def _normal(st: np.ndarray) -> float:
    while True:
        r = _next(st)
        idx = np.int64(r & uint64(0xFF))
        r >>= uint64(8)
        rabs = (r >> uint64(1)) & uint64(0x000FFFFFFFFFFFFF)
        x = rabs * _WI[idx]
        if r & uint64(1):
            x = -x
        if rabs < _KI[idx]:
            return x  # 99.3% of draws
        if idx == 0:  # the tail beyond R
            while True:
                xx = -np.log1p(-_uniform(st)) / _ZIGGURAT_R
                yy = -np.log1p(-_uniform(st))
                if yy + yy > xx * xx:
                    return (
                        -(_ZIGGURAT_R + xx) if (rabs >> uint64(8)) & uint64(1) else _ZIGGURAT_R + xx
                    )
        elif (_FI[idx - 1] - _FI[idx]) * _uniform(st) + _FI[idx] < np.exp(-0.5 * x * x):
            return x


@numba.njit(parallel=True, cache=True)
def advance(
    x: np.ndarray,
    states: np.ndarray,
    n_steps: int,
    mode: int,
    c1: float,
    c2: float,
    c3: float,
    sums: np.ndarray,
    measure: bool,
) -> None:
    """Move every walker `n_steps`; when `measure`, add Σx, Σx², Σx⁴ per block to `sums`.

    mode 0: x' = c1·x + c2·ξ (exact OU or Euler–Maruyama in the harmonic well);
    mode 1: x' = x + c1·x·(1 − c3·x²) + c2·ξ (Euler–Maruyama in the double well).
    """
    n = x.shape[0]
    blocks = states.shape[0]
    for b in numba.prange(blocks):
        st = states[b].copy()
        s1 = s2 = s4 = 0.0
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            xi = x[i]
            for _ in range(n_steps):
                g = _normal(st)
                drift = c1 * xi if mode == 0 else xi + c1 * xi * (1.0 - c3 * xi * xi)
                xi = drift + c2 * g
                if measure:
                    xx = xi * xi
                    s1 += xi
                    s2 += xx
                    s4 += xx * xx
            x[i] = xi
        states[b] = st
        sums[b, 0] += s1
        sums[b, 1] += s2
        sums[b, 2] += s4


class Walkers(Protocol):
    """A backend's walkers: positions, and Σx, Σx², Σx⁴ per block over the measured steps."""

    device: str

    def advance(self, n_steps: int, measure: bool) -> None: ...

    def positions(self) -> np.ndarray: ...

    def block_sums(self) -> np.ndarray: ...


class NumbaWalkers:
    """The walkers of the `numba` backend, moved by :func:`advance`."""

    device = "cpu"

    def __init__(self, p: LangevinParams) -> None:
        self.coefficients = coefficients(p)
        self.x = np.full(p.walkers, p.initial_position, dtype=np.float64)
        self.states = seed_states(p.seed, RNG_BLOCKS)
        self.sums = np.zeros((RNG_BLOCKS, 3))

    def advance(self, n_steps: int, measure: bool) -> None:
        advance(self.x, self.states, n_steps, *self.coefficients, self.sums, measure)

    def positions(self) -> np.ndarray:
        return self.x

    def block_sums(self) -> np.ndarray:
        return self.sums


def walkers_for(p: LangevinParams) -> Walkers:
    """The walkers of `p.backend`, at `initial_position`."""
    if p.backend == "numba":
        return NumbaWalkers(p)
    from ml.simulation_tf import LangevinWalkers, stream_key

    key = stream_key(p.seed, TF_STREAM)
    return LangevinWalkers(p.walkers, p.initial_position, coefficients(p), RNG_BLOCKS, key)


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


# --- estimates -------------------------------------------------------------------------------


def _block_estimates(p: LangevinParams, sums: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    """Variance, mean position and mean energy over the measured window, with batch-means se."""

    def stats(s: np.ndarray, n: np.ndarray | float) -> tuple[Any, Any, Any]:
        m1, m2, m4 = s[..., 0] / n, s[..., 1] / n, s[..., 2] / n
        if p.potential == "harmonic":
            energy = 0.5 * p.stiffness * m2
        else:
            d2 = p.well_distance**2
            energy = p.barrier * (m4 / d2**2 - 2 * m2 / d2 + 1)
        return m2 - m1 * m1, m1, energy

    total = stats(sums.sum(axis=0), float(counts.sum()))
    used = counts > 0
    blocks = stats(sums[used], counts[used])
    out: dict[str, Any] = {}
    for name, value, per_block in zip(
        ("stationary_variance", "mean_position", "stationary_mean_energy"),
        total,
        blocks,
        strict=True,
    ):
        out[name] = float(value)
        se = np.std(per_block, ddof=1) / math.sqrt(len(per_block)) if len(per_block) > 1 else None
        out[f"{name}_se"] = None if se is None else float(se)
    return out


def autocorrelation(snapshots: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """C(k) = ⟨δx_t δx_{t+k}⟩ for k = 0..max_lag over time origins, per walker group.

    Returns the mean over `ACF_GROUPS` groups of walkers and its standard error.
    """
    points = snapshots.shape[0]
    y = snapshots - snapshots.mean()
    spectrum = np.fft.rfft(y, n=2 * points, axis=0)
    lagged = np.fft.irfft(spectrum * spectrum.conj(), axis=0)[: max_lag + 1]
    lagged /= (points - np.arange(max_lag + 1))[:, None]
    groups = np.array_split(lagged, min(ACF_GROUPS, lagged.shape[1]), axis=1)
    per_group = np.stack([g.mean(axis=1) for g in groups])
    se = per_group.std(axis=0, ddof=1) / math.sqrt(len(groups)) if len(groups) > 1 else None
    return per_group.mean(axis=0), se if se is not None else np.full(max_lag + 1, np.nan)


def _acf_result(
    p: LangevinParams, snapshots: list[np.ndarray], every: int
) -> dict[str, Any] | None:
    if len(snapshots) < 8:
        return None
    series = np.stack(snapshots)
    max_lag = len(snapshots) // 4
    values, se = autocorrelation(series, max_lag)
    lags = np.arange(0, max_lag + 1, max(1, math.ceil((max_lag + 1) / MAX_ACF_LAGS)))
    exact = None
    if p.potential == "harmonic":
        _, rho, _, _ = coefficients(p)
        variance, _ = integrator_moments(p)
        exact = [float(variance * rho ** (k * every)) for k in lags]  # type: ignore[operator]
    return {
        "lag_times": [float(k * every * p.dt) for k in lags],
        "values": [float(values[k]) for k in lags],
        "values_se": [None if math.isnan(se[k]) else float(se[k]) for k in lags],
        "exact": exact,
    }


@register_kind(
    name="langevin",
    spec=LangevinSpec,
    summary="Overdamped Langevin walkers in a harmonic or double-well potential.",
    category="simulation",
)
def run(spec: LangevinSpec, reporter: Reporter, context: RunContext | None = None) -> RunOutcome:
    p = spec.params
    walkers = walkers_for(p)
    x = walkers.positions()
    burn_in = p.steps // 2
    every = p.record_every or max(1, math.ceil(p.steps / MAX_RECORDED_POINTS))
    recorded = set(range(0, p.steps + 1, every)) | {p.steps}
    acf_walkers = min(p.walkers, ACF_WALKERS)
    snapshots: list[np.ndarray] = []
    energy0 = float(np.mean(p.energy(x)))
    previous = (0.0, energy0)  # (time, mean energy) of the last recorded point
    start = {"time": 0.0, "mean_energy": energy0, "position_variance": 0.0, "heat": 0.0}
    reporter.metrics(0, start)

    step = 0
    for target in sorted(recorded | {burn_in})[1:]:
        walkers.advance(target - step, step >= burn_in)
        step = target
        if target not in recorded:
            continue
        x = walkers.positions()
        t, energy = step * p.dt, float(np.mean(p.energy(x)))
        if not math.isfinite(energy):
            raise JobFailed("diverged", f"walkers diverged by step {step}; lower dt")
        reporter.metrics(
            step,
            {
                "time": t,
                "mean_energy": energy,
                "position_variance": float(np.var(x)),
                "heat": energy0 - energy,
                "entropy_production": (previous[1] - energy) / (p.temperature * (t - previous[0])),
            },
        )
        previous = (t, energy)
        if step >= burn_in and step % every == 0:
            snapshots.append(x[:acf_walkers].copy())
        reporter.progress(step / p.steps, step=step, total_steps=p.steps)

    block_walkers = np.diff(np.arange(RNG_BLOCKS + 1) * p.walkers // RNG_BLOCKS)
    estimates = _block_estimates(p, walkers.block_sums(), block_walkers * (p.steps - burn_in))
    exact_variance, exact_energy = boltzmann_moments(p)
    integrator_variance, integrator_energy = integrator_moments(p)
    warning = None
    if burn_in * p.dt < BURN_IN_RELAXATION_TIMES * p.relaxation_time:
        warning = (
            f"the unmeasured first half (t = {burn_in * p.dt:g}) is shorter than "
            f"{BURN_IN_RELAXATION_TIMES:g} relaxation times (τ = {p.relaxation_time:g}): the "
            "stationary estimates may still remember the initial position"
        )
    result: dict[str, Any] = {
        **estimates,
        "exact_variance": exact_variance,
        "integrator_variance": integrator_variance,
        "exact_mean_energy": exact_energy,
        "integrator_mean_energy": integrator_energy,
        "relaxation_time": p.relaxation_time,
        "measured_from_time": burn_in * p.dt,
        "final_time": p.steps * p.dt,
        "autocorrelation": _acf_result(p, snapshots, every),
        "potential": p.potential,
        "integrator": p.integrator,
        "steps": p.steps,
        "walkers": p.walkers,
        "backend": p.backend,
        "warning": warning,
    }
    return RunOutcome(result=result, device=walkers.device)
