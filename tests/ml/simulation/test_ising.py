"""The 2D Ising kind against exact enumeration, Onsager and Yang (THERMODYNAMICS.md section D).

Every statistical tolerance is a number of the standard errors the kind itself reports.
"""

from __future__ import annotations

import math
import time
from functools import cache
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from ml.core.registry import get_kind, list_kinds
from ml.core.reporting import MemoryReporter
from ml.simulation.ising import (
    MAX_SIZE,
    IsingParams,
    IsingSpec,
    onsager_energy_per_spin,
    yang_magnetization,
)
from ml.simulation.ising_kernels import (
    lattice_sums,
    row_states,
    sweeps_parallel,
    sweeps_serial,
    thresholds,
)

Z = 5.0  # standard errors
OBSERVABLES = ("energy_per_spin", "abs_magnetization", "magnetization")
FLUCTUATIONS = ("specific_heat", "susceptibility")


def run(params: dict[str, Any]) -> tuple[MemoryReporter, dict[str, Any]]:
    spec = IsingSpec.model_validate({"kind": "ising", "params": params})
    reporter = MemoryReporter()
    return reporter, get_kind("ising").run(spec, reporter, None).result


@cache
def enumerate_lattice(size: int, temperature: float, coupling: float, field: float) -> dict:
    """Exact finite-lattice averages over all 2^(L²) states, with the kind's conventions."""
    n = size * size
    codes = np.arange(2**n)
    s = (((codes[:, None] >> np.arange(n)) & 1) * 2 - 1).reshape(-1, size, size)
    pairs = (s * np.roll(s, 1, 1)).sum((1, 2)) + (s * np.roll(s, 1, 2)).sum((1, 2))
    magnet = s.sum((1, 2))
    energy = -coupling * pairs - field * magnet
    weight = np.exp(-(energy - energy.min()) / temperature)
    weight /= weight.sum()
    e, m = energy / n, magnet / n
    mean_e, mean_abs_m = weight @ e, weight @ np.abs(m)
    return {
        "energy_per_spin": mean_e,
        "abs_magnetization": mean_abs_m,
        "magnetization": weight @ m,
        "specific_heat": n * (weight @ e**2 - mean_e**2) / temperature**2,
        "susceptibility": n * (weight @ m**2 - mean_abs_m**2) / temperature,
    }


def assert_within(entry: dict[str, Any], name: str, expected: float) -> None:
    se = entry[f"{name}_se"]
    assert abs(entry[name] - expected) < Z * se, (entry["temperature"], name, entry[name], expected)


def test_registered() -> None:
    assert "ising" in list_kinds()
    assert get_kind("ising").spec is IsingSpec


@pytest.mark.parametrize(
    "coupling,field,temperatures",
    [(1.0, 0.0, [2.0, 3.0]), (1.0, 0.3, [2.5]), (-1.0, 0.0, [2.0])],
    ids=["ferro", "field", "antiferro"],
)
def test_4x4_matches_exact_enumeration(coupling: float, field: float, temperatures: list) -> None:
    params = {"size": 4, "coupling": coupling, "field": field, "temperatures": temperatures}
    _, result = run({**params, "sweeps": 20000, "burn_in": 500})
    for entry in result["results"]:
        exact = enumerate_lattice(4, entry["temperature"], coupling, field)
        for name in OBSERVABLES + FLUCTUATIONS:
            assert_within(entry, name, exact[name])


def test_onsager_and_yang_away_from_the_critical_point() -> None:
    _, result = run({"size": 32, "temperatures": [1.5, 1.8, 3.5], "sweeps": 3000})
    low, mid, high = result["results"]
    for entry in (low, mid, high):  # ξ ≪ 32 here, so the infinite lattice's answers hold
        assert_within(entry, "energy_per_spin", onsager_energy_per_spin(entry["temperature"]))
    for entry in (low, mid):
        assert_within(entry, "abs_magnetization", yang_magnetization(entry["temperature"]))
    # above T_c the finite lattice keeps ⟨|m|⟩ ~ N^(-1/2) > 0, far below the ordered value
    assert 0 < high["abs_magnetization"] < 0.2


def test_exact_formulas() -> None:
    t_c = 2 / math.log(1 + math.sqrt(2))
    assert onsager_energy_per_spin(t_c) == pytest.approx(-math.sqrt(2), rel=1e-12)
    assert onsager_energy_per_spin(t_c * (1 + 1e-9)) == pytest.approx(-math.sqrt(2), rel=1e-6)
    assert onsager_energy_per_spin(0.1) == pytest.approx(-2.0, rel=1e-12)
    assert onsager_energy_per_spin(1e4) == pytest.approx(-2 / 1e4, rel=1e-3)  # −2J·tanh(βJ)
    assert yang_magnetization(0.5) == pytest.approx(1.0, abs=1e-6)
    assert yang_magnetization(t_c) == yang_magnetization(3.0) == 0.0


def test_thresholds_are_the_metropolis_acceptance() -> None:
    table = thresholds(2.0, 1.0, 0.25)
    for i, spin in enumerate((-1, 1)):
        for k, neighbours in enumerate((-4, -2, 0, 2, 4)):
            delta = 2 * spin * (neighbours + 0.25)
            accept = min(1.0, math.exp(-delta / 2.0))
            assert int(table[5 * i + k]) == (1 << 53 if accept == 1 else int(accept * 2.0**53))


def test_parallel_and_serial_kernels_are_the_same_chain() -> None:
    size = 128
    spins = np.random.default_rng(0).choice(np.array([-1, 1], np.int8), size=(size, size))
    table = thresholds(2.3, 1.0, 0.1)
    bond, magnet = lattice_sums(spins)
    chains = []
    for kernel in (sweeps_serial, sweeps_parallel):
        lattice, states, out = spins.copy(), row_states(3, size), np.empty((5, 3), np.int64)
        final = kernel(lattice, table, states, bond, magnet, out)
        assert tuple(final) == lattice_sums(lattice)  # the integer bookkeeping is exact
        chains.append((lattice, out, states))
    for a, b in zip(*chains, strict=True):
        np.testing.assert_array_equal(a, b)


def test_metric_history_runs_across_the_temperature_sweep() -> None:
    reporter, result = run({"size": 8, "temperatures": [3.0, 2.0], "sweeps": 600, "burn_in": 400})
    steps, temps = reporter.series("temperature")
    assert steps == sorted(steps) and steps[-1] == 2000
    assert set(temps) == {3.0, 2.0} and temps[0] == 3.0 and temps[-1] == 2.0
    for name in ("energy_per_spin", "abs_magnetization", "acceptance_rate"):
        assert reporter.series(name)[0] == steps
    c_steps, c = reporter.series("specific_heat")
    assert c_steps == [1000, 2000]
    assert c == [entry["specific_heat"] for entry in result["results"]]
    assert reporter.series("susceptibility")[0] == [1000, 2000]
    assert reporter.fractions[-1] == 1.0


def test_same_seed_same_result() -> None:
    params = {"size": 8, "temperatures": [2.2], "sweeps": 200, "start": "random", "seed": 5}
    assert run(params)[1] == run(params)[1]
    assert run(params)[1] != run({**params, "seed": 6})[1]


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"size": 5}, "even"),
        ({"size": 1}, "even"),
        ({"size": 0}, "even"),
        ({"size": MAX_SIZE + 2}, "MiB"),
        ({"temperatures": [2.0, 0.0]}, "positive"),
        ({"temperatures": [-1.0]}, "positive"),
        ({"temperatures": [float("inf")]}, "finite number"),
        ({"temperatures": []}, "at least 1"),
        ({"sweeps": 5}, "greater than or equal to 20"),
        ({"burn_in": 10**7}, "per temperature"),
        ({"coupling": float("nan")}, "finite number"),
    ],
)
def test_bad_parameters_say_why(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        IsingParams.model_validate(params)


def test_example_validates_and_runs_within_budget() -> None:
    spec = IsingSpec.model_validate(IsingSpec.example)
    start = time.perf_counter()
    result = get_kind("ising").run(spec, MemoryReporter(), None).result
    assert time.perf_counter() - start < 30
    assert [e["temperature"] for e in result["results"]] == IsingSpec.example["params"][
        "temperatures"
    ]
