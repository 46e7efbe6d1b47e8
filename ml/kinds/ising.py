"""The 2D Ising model on a periodic L×L lattice, sampled by Metropolis, as a job kind.

E = −J Σ_⟨ij⟩ s_i s_j − h Σ_i s_i. A sweep updates the two checkerboard colours in turn: spins of
one colour do not interact, so each half-sweep is a product of independent Metropolis updates
and the chain keeps the Boltzmann law stationary. The kernel keeps spins as int8, looks the
acceptance thresholds up in a table of ten entries (one per spin and neighbour sum), draws one
xoshiro256+ number per site from a stream owned by the site's row (so rows run in parallel and
the chain does not depend on the thread count), and tracks energy and magnetisation exactly as
integers from the accepted flips.

Per temperature: `burn_in` sweeps, then `sweeps` measured ones split into `BATCHES` batches
for the standard errors (batch means; jackknife over batches for c and χ).

`backend: tensorflow` sweeps with `ml.simulation_tf` instead: the same checkerboard Metropolis
and thresholds, with the two colours as arrays rolled for the neighbour sums.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol

import numba
import numpy as np
from numba import uint64
from pydantic import Field, model_validator
from scipy import special

from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, StrictModel

MAX_SIZE = 8192  # an int8 lattice of 64 MiB
MAX_TEMPERATURES = 200
MAX_SWEEPS_PER_TEMPERATURE = 2_000_000  # three per-sweep series of 8 bytes each: 48 MB
MAX_RECORDED_POINTS = 1000
BATCHES = 20
PARALLEL_MIN_SIZE = 128  # below this a parallel region costs more than the half-sweep it runs
CRITICAL_TEMPERATURE = 2 / math.log(1 + math.sqrt(2))  # in units of J
_ALWAYS = 1 << 53
TF_STREAM = 3  # the label of the sweeps' stateless stream, see `ml.simulation_tf.stream_key`


class IsingParams(StrictModel):
    size: int = Field(32, description="L of the periodic L×L lattice; even (checkerboard).")
    temperatures: list[float] = Field(
        default_factory=lambda: [2.0],
        min_length=1,
        max_length=MAX_TEMPERATURES,
        description="A sweep of temperatures, run in this order within one job.",
    )
    coupling: float = Field(1.0, description="J (negative: antiferromagnet).")
    field: float = Field(0.0, description="h, the external field.")
    sweeps: int = Field(2000, ge=BATCHES, description="Measured sweeps per temperature.")
    burn_in: int = Field(500, ge=0, description="Unmeasured sweeps before them.")
    start: Literal["ordered", "random", "previous"] = Field(
        "ordered",
        description="Lattice at each temperature: all up, random, or the previous temperature's.",
    )
    seed: int = Field(0, ge=0)
    record_every: int | None = Field(
        None, ge=1, description="Record every n-th sweep (default: at most 1000 points in all)."
    )
    backend: Literal["numba", "tensorflow"] = Field(
        "numba",
        description="`numba`: int8 lattice, rows in parallel, the fastest choice on a CPU. "
        "`tensorflow`: the same checkerboard Metropolis in TensorFlow (stateless seeded draws); "
        "worth it for large lattices (L of 1024 and up) on a job that has a GPU "
        "(`resources.gpu`), which it uses.",
    )

    @model_validator(mode="after")
    def _check(self) -> IsingParams:
        if self.size < 2 or self.size % 2:
            raise ValueError(
                f"size must be even and at least 2 (got {self.size}): the checkerboard update "
                "needs two colours that also alternate across the periodic boundary"
            )
        if self.size > MAX_SIZE:
            raise ValueError(
                f"size = {self.size} exceeds {MAX_SIZE}: the lattice would take "
                f"{self.size**2 / 2**20:.0f} MiB, and a job is limited to "
                f"{MAX_SIZE**2 // 2**20} MiB of spins"
            )
        for t in self.temperatures:
            if t <= 0:
                raise ValueError(f"temperatures must be positive (got {t})")
        if self.burn_in + self.sweeps > MAX_SWEEPS_PER_TEMPERATURE:
            raise ValueError(
                f"burn_in + sweeps = {self.burn_in + self.sweeps} exceeds "
                f"{MAX_SWEEPS_PER_TEMPERATURE:,} per temperature (the per-sweep series are kept)"
            )
        return self


class IsingSpec(JobSpec):
    kind: Literal["ising"]
    params: IsingParams = Field(default_factory=IsingParams)


IsingSpec.example = {
    "kind": "ising",
    "name": "ising-32-sweep",
    "params": {
        "size": 32,
        "temperatures": [1.5, 2.0, 2.269, 2.5, 3.0],
        "coupling": 1.0,
        "field": 0.0,
        "sweeps": 2000,
        "burn_in": 500,
        "seed": 0,
    },
}


# --- the kernel ------------------------------------------------------------------------------


def thresholds(temperature: float, coupling: float, field: float) -> np.ndarray:
    """Acceptance thresholds t, accept iff a 53-bit uniform integer < t (t = 2^53: always).

    Index ((s + 1) / 2)·5 + (n + 4)/2 for spin s and neighbour sum n; ΔE = 2 s (J n + h).
    """
    table = np.empty(10, np.uint64)
    for i, spin in enumerate((-1, 1)):
        for k, neighbours in enumerate((-4, -2, 0, 2, 4)):
            delta = 2 * spin * (coupling * neighbours + field)
            accept = math.exp(-delta / temperature) if delta > 0 else 1.0
            table[5 * i + k] = _ALWAYS if accept >= 1.0 else int(accept * 2.0**53)
    return table


@numba.njit(inline="always")
def _update_row(
    spins: np.ndarray, i: int, color: int, table: np.ndarray, states: np.ndarray
) -> tuple[Any, Any, Any]:
    """Metropolis on the sites of one colour in row i; returns (Δbond, Δmagnet, accepted)."""
    size = spins.shape[0]
    row = spins[i]
    up = spins[i - 1 if i > 0 else size - 1]
    down = spins[i + 1 if i < size - 1 else 0]
    s0, s1, s2, s3 = states[i, 0], states[i, 1], states[i, 2], states[i, 3]
    d_bond = d_magnet = accepted = np.int64(0)
    for j in range((i + color) & 1, size, 2):
        s = np.int64(row[j])
        left = row[j - 1 if j > 0 else size - 1]
        right = row[j + 1 if j < size - 1 else 0]
        n = np.int64(up[j]) + np.int64(down[j]) + np.int64(left) + np.int64(right)
        r = s0 + s3  # xoshiro256+, inlined: drawn for every site, so no unpredictable branch
        t = s1 << uint64(17)
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = (s3 << uint64(45)) | (s3 >> uint64(19))
        flip = np.int64((r >> uint64(11)) < table[((s + 1) >> 1) * 5 + ((n + 4) >> 1)])
        row[j] = s * (1 - 2 * flip)
        d_bond += 2 * s * n * flip
        d_magnet -= 2 * s * flip
        accepted += flip
    states[i, 0], states[i, 1], states[i, 2], states[i, 3] = s0, s1, s2, s3
    return d_bond, d_magnet, accepted


@numba.njit(cache=True)
def sweeps_serial(
    spins: np.ndarray,
    table: np.ndarray,
    states: np.ndarray,
    bond: int,
    magnet: int,
    out: np.ndarray,
) -> tuple[int, int]:
    """len(out) sweeps; out[k] = (bond, magnet, accepted) after sweep k. See `sweeps_parallel`."""
    for k in range(out.shape[0]):
        accepted = 0
        for color in range(2):
            for i in range(spins.shape[0]):
                db, dm, da = _update_row(spins, i, color, table, states)
                bond += db
                magnet += dm
                accepted += da
        out[k, 0], out[k, 1], out[k, 2] = bond, magnet, accepted
    return bond, magnet


@numba.njit(parallel=True, cache=True)
def sweeps_parallel(
    spins: np.ndarray,
    table: np.ndarray,
    states: np.ndarray,
    bond: int,
    magnet: int,
    out: np.ndarray,
) -> tuple[int, int]:
    """len(out) sweeps, rows of one colour in parallel; the same chain as `sweeps_serial`.

    bond = −Σ_⟨ij⟩ s_i s_j and magnet = Σ s_i on entry, updated from the accepted flips.
    """
    size = spins.shape[0]
    deltas = np.zeros((size, 3), np.int64)
    for k in range(out.shape[0]):
        for color in range(2):
            for i in numba.prange(size):
                db, dm, da = _update_row(spins, i, color, table, states)
                deltas[i, 0] += db
                deltas[i, 1] += dm
                deltas[i, 2] += da
        total = deltas.sum(axis=0)
        bond += total[0]
        magnet += total[1]
        out[k, 0], out[k, 1], out[k, 2] = bond, magnet, total[2]
        deltas[:] = 0
    return bond, magnet


def run_sweeps(
    spins: np.ndarray, table: np.ndarray, states: np.ndarray, bond: int, magnet: int, n: int
) -> tuple[np.ndarray, int, int]:
    """n sweeps; returns the per-sweep (bond, magnet, accepted) and the final bond and magnet."""
    out = np.empty((n, 3), np.int64)
    kernel = sweeps_parallel if spins.shape[0] >= PARALLEL_MIN_SIZE else sweeps_serial
    bond, magnet = kernel(spins, table, states, bond, magnet, out)
    return out, int(bond), int(magnet)


class Lattice(Protocol):
    """A backend's lattice: `load` a configuration, then sweep it."""

    device: str

    def load(self, spins: np.ndarray) -> None: ...

    def sweeps(self, table: np.ndarray, n: int) -> np.ndarray:
        """n sweeps at these thresholds; the per-sweep (bond, magnet, accepted), int64."""
        ...


class NumbaLattice:
    """The lattice of the `numba` backend: int8 spins swept by :func:`run_sweeps`."""

    device = "cpu"

    def __init__(self, p: IsingParams) -> None:
        self.states = row_states(p.seed, p.size)

    def load(self, spins: np.ndarray) -> None:
        self.spins = spins
        self.bond, self.magnet = lattice_sums(spins)

    def sweeps(self, table: np.ndarray, n: int) -> np.ndarray:
        out, self.bond, self.magnet = run_sweeps(
            self.spins, table, self.states, self.bond, self.magnet, n
        )
        return out


def lattice_for(p: IsingParams) -> Lattice:
    if p.backend == "numba":
        return NumbaLattice(p)
    from ml.simulation_tf import IsingLattice, stream_key

    return IsingLattice(p.size, stream_key(p.seed, TF_STREAM))


def lattice_sums(spins: np.ndarray) -> tuple[int, int]:
    """(−Σ_⟨ij⟩ s_i s_j, Σ s_i) of a periodic lattice."""
    s = spins.astype(np.int64)
    pairs = (s * np.roll(s, 1, axis=0)).sum() + (s * np.roll(s, 1, axis=1)).sum()
    return int(-pairs), int(s.sum())


def row_states(seed: int, size: int) -> np.ndarray:
    states = np.random.SeedSequence([seed, 1]).generate_state(4 * size, np.uint64)
    states = states.reshape(size, 4)
    states[np.all(states == 0, axis=1), 0] = 1  # the all-zero state is xoshiro's fixed point
    return states


# --- exact answers (infinite lattice, h = 0) -------------------------------------------------


def onsager_energy_per_spin(temperature: float, coupling: float = 1.0) -> float:
    """Onsager's u(T); the same for ±J on the (bipartite) square lattice."""
    j = abs(coupling)
    x = 2 * j / temperature
    k = 2 * math.sinh(x) / math.cosh(x) ** 2
    if abs(k - 1) < 1e-12:
        return -math.sqrt(2) * j
    bracket = 1 + (2 / math.pi) * (2 * math.tanh(x) ** 2 - 1) * special.ellipk(k * k)
    return float(-j / math.tanh(x) * bracket)


def yang_magnetization(temperature: float, coupling: float = 1.0) -> float:
    """Yang's spontaneous magnetisation of the ferromagnet; 0 at and above T_c."""
    if temperature >= CRITICAL_TEMPERATURE * coupling:
        return 0.0
    return float((1 - math.sinh(2 * coupling / temperature) ** -4) ** 0.125)


# --- estimates -------------------------------------------------------------------------------


def _batch_se(values: np.ndarray) -> float:
    means = np.array([b.mean() for b in np.array_split(values, BATCHES)])
    return float(means.std(ddof=1) / math.sqrt(BATCHES))


def _jackknife(first: np.ndarray, second: np.ndarray, estimate: Any) -> tuple[float, float]:
    """estimate(⟨first⟩, ⟨second⟩) over all sweeps, and its jackknife se over the batches."""
    sums = np.array(
        [
            (a.sum(), b.sum(), len(a))
            for a, b in zip(
                np.array_split(first, BATCHES), np.array_split(second, BATCHES), strict=True
            )
        ]
    )
    total = sums.sum(axis=0)
    full = estimate(total[0] / total[2], total[1] / total[2])
    rest = total - sums
    leave_one_out = estimate(rest[:, 0] / rest[:, 2], rest[:, 1] / rest[:, 2])
    se = math.sqrt((BATCHES - 1) / BATCHES * np.sum((leave_one_out - leave_one_out.mean()) ** 2))
    return float(full), se


def summarize(p: IsingParams, temperature: float, measured: np.ndarray) -> dict[str, Any]:
    """The per-temperature result from the measured sweeps' (bond, magnet, accepted)."""
    n_spins = p.size**2
    e = (p.coupling * measured[:, 0] - p.field * measured[:, 1]) / n_spins
    m = measured[:, 1] / n_spins
    abs_m = np.abs(m)
    specific_heat, specific_heat_se = _jackknife(
        e * e, e, lambda e2, e1: n_spins * (e2 - e1 * e1) / temperature**2
    )
    susceptibility, susceptibility_se = _jackknife(
        m * m, abs_m, lambda m2, m1: n_spins * (m2 - m1 * m1) / temperature
    )
    energy_se = _batch_se(e)
    energy_var = float(e.var())
    exact = p.field == 0 and p.coupling > 0
    return {
        "temperature": temperature,
        "energy_per_spin": float(e.mean()),
        "energy_per_spin_se": energy_se,
        "abs_magnetization": float(abs_m.mean()),
        "abs_magnetization_se": _batch_se(abs_m),
        "magnetization": float(m.mean()),
        "magnetization_se": _batch_se(m),
        "specific_heat": specific_heat,
        "specific_heat_se": specific_heat_se,
        "susceptibility": susceptibility,
        "susceptibility_se": susceptibility_se,
        "acceptance_rate": float(measured[:, 2].mean() / n_spins),
        # integrated autocorrelation time of e from the batch-means variance, in sweeps
        "energy_autocorrelation_sweeps": (
            len(e) * energy_se**2 / (2 * energy_var) if energy_var > 0 else None
        ),
        "onsager_energy_per_spin": onsager_energy_per_spin(temperature, p.coupling)
        if p.field == 0
        else None,
        "yang_magnetization": yang_magnetization(temperature, p.coupling) if exact else None,
    }


def initial_lattice(p: IsingParams, rng: np.random.Generator) -> np.ndarray:
    if p.start == "random":
        return rng.choice(np.array([-1, 1], np.int8), size=(p.size, p.size))
    return np.ones((p.size, p.size), np.int8)


@register_kind(
    name="ising",
    spec=IsingSpec,
    summary="2D Ising model, checkerboard Metropolis over a sweep of temperatures.",
    category="simulation",
)
def run(spec: IsingSpec, reporter: Reporter, context: RunContext | None = None) -> RunOutcome:
    p = spec.params
    n_spins = p.size**2
    per_temperature = p.burn_in + p.sweeps
    total_sweeps = per_temperature * len(p.temperatures)
    every = p.record_every or max(1, math.ceil(total_sweeps / MAX_RECORDED_POINTS))
    lattice = lattice_for(p)
    lattice_rng = np.random.default_rng([p.seed, 2])
    results = []
    for index, temperature in enumerate(p.temperatures):
        if index == 0 or p.start != "previous":
            lattice.load(initial_lattice(p, lattice_rng))
        table = thresholds(temperature, p.coupling, p.field)
        offset = index * per_temperature
        series = np.empty((per_temperature, 3), np.int64)
        done = 0
        while done < per_temperature:
            n = min(every - done % every, per_temperature - done)
            series[done : done + n] = lattice.sweeps(table, n)
            chunk = series[done : done + n]
            done += n
            e = (p.coupling * chunk[:, 0] - p.field * chunk[:, 1]) / n_spins
            reporter.metrics(
                offset + done,
                {
                    "temperature": temperature,
                    "energy_per_spin": float(e.mean()),
                    "abs_magnetization": float(np.abs(chunk[:, 1]).mean() / n_spins),
                    "acceptance_rate": float(chunk[:, 2].mean() / n_spins),
                },
            )
            reporter.progress(
                (offset + done) / total_sweeps, step=offset + done, total_steps=total_sweeps
            )
        summary = summarize(p, temperature, series[p.burn_in :])
        reporter.metrics(
            offset + per_temperature,
            {
                "specific_heat": summary["specific_heat"],
                "susceptibility": summary["susceptibility"],
            },
        )
        results.append(summary)
    result: dict[str, Any] = {
        "results": results,
        "size": p.size,
        "critical_temperature": CRITICAL_TEMPERATURE * abs(p.coupling),
        "sweeps_per_temperature": per_temperature,
        "backend": p.backend,
    }
    return RunOutcome(result=result, device=lattice.device)
