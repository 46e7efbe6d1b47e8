"""The 2D Ising model on a periodic L×L lattice, sampled by Metropolis, as a job kind.

E = −J Σ_⟨ij⟩ s_i s_j − h Σ_i s_i. A sweep updates the two checkerboard colours in turn: spins of
one colour do not interact, so each half-sweep is a product of independent Metropolis updates
and the chain keeps the Boltzmann law stationary (the Numba kernel: `ising_kernels`).

Per temperature: `burn_in` sweeps, then `sweeps` measured ones split into `BATCHES` batches
for the standard errors (batch means; jackknife over batches for c and χ).

`backend: tensorflow` sweeps with `ml.simulation.tf_backend` instead: the same checkerboard
Metropolis and thresholds, with the two colours as arrays rolled for the neighbour sums.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy import special

from ml.core.registry import PlotLayout, register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, StrictModel, full_example
from ml.simulation.ising_kernels import Lattice, NumbaLattice, thresholds
from ml.simulation.shared import record_every_field, recording_stride

MAX_SIZE = 8192  # an int8 lattice of 64 MiB
MAX_TEMPERATURES = 200
MAX_SWEEPS_PER_TEMPERATURE = 2_000_000  # three per-sweep series of 8 bytes each: 48 MB
BATCHES = 20
CRITICAL_TEMPERATURE = 2 / math.log(1 + math.sqrt(2))  # in units of J
TF_STREAM = 3  # the label of the sweeps' stateless stream, see `tf_backend.stream_key`


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
    record_every: int | None = record_every_field("sweep", " in all")
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
    """2D Ising model, checkerboard Metropolis over a sweep of temperatures."""

    kind: Literal["ising"]
    params: IsingParams = Field(default_factory=IsingParams)


IsingSpec.example = full_example(
    "ising", "ising-32-sweep", IsingParams, temperatures=[1.5, 2.0, 2.269, 2.5, 3.0]
)


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


def lattice_for(p: IsingParams) -> Lattice:
    if p.backend == "numba":
        return NumbaLattice(p.seed, p.size)
    from ml.simulation.tf_backend import IsingLattice, stream_key

    return IsingLattice(p.size, stream_key(p.seed, TF_STREAM))


PLOT = PlotLayout(
    "sweep",
    {
        "energy_per_spin": "J",
        "temperature": "J / k_B",
        "abs_magnetization": "per spin",
        "acceptance_rate": "fraction of spins",
        "specific_heat": "k_B per spin",
        "susceptibility": "per spin",
    },
)


@register_kind(spec=IsingSpec, plot=PLOT)
def run(spec: IsingSpec, reporter: Reporter, context: RunContext | None = None) -> RunOutcome:
    p = spec.params
    n_spins = p.size**2
    per_temperature = p.burn_in + p.sweeps
    total_sweeps = per_temperature * len(p.temperatures)
    every = recording_stride(total_sweeps, p.record_every)
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
