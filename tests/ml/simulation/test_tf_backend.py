"""The simulation kinds' `backend: tensorflow` against the exact answers (THERMODYNAMICS.md D).

The same oracles as the Numba/NumPy tests; every statistical tolerance is a number of the
standard errors the kind itself reports.
"""

from __future__ import annotations

import math
import subprocess
import sys
from functools import cache
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from ml.core.registry import get_kind, list_kinds
from ml.core.reporting import MemoryReporter
from ml.simulation.ising import onsager_energy_per_spin, yang_magnetization
from ml.simulation.ising_kernels import lattice_sums, thresholds
from tests.conftest import submit

Z = 5.0  # standard errors
TF = {"backend": "tensorflow"}


def params_model(kind: str) -> Any:
    return get_kind(kind).spec.model_fields["params"].annotation


def backend_kinds() -> list[str]:
    """Kinds whose params have a `backend` field."""
    return [name for name in list_kinds() if "backend" in params_model(name).model_fields]


def run(kind: str, params: dict[str, Any]) -> tuple[MemoryReporter, dict[str, Any]]:
    params = {**TF, **params}
    spec = get_kind(kind).spec.model_validate({"kind": kind, "params": params})
    reporter = MemoryReporter()
    outcome = get_kind(kind).run(spec, reporter, None)  # type: ignore[arg-type]
    assert outcome.result["backend"] == params["backend"]
    assert outcome.device in ("CPU:0", "GPU:0")
    return reporter, outcome.result


def assert_within(
    entry: dict[str, Any], name: str, expected: float, se: float | None = None
) -> None:
    se = entry[f"{name}_se"] if se is None else se
    assert abs(entry[name] - expected) < Z * se, (name, entry[name], expected, se)


def test_the_simulation_kinds_have_a_backend() -> None:
    assert set(backend_kinds()) >= {"langevin", "ising", "jarzynski"}


def test_importing_the_kinds_does_not_import_tensorflow() -> None:
    probe = (
        "import ml.simulation.langevin, ml.simulation.ising, ml.simulation.jarzynski as j, sys; "
        "j.JarzynskiParams(backend='tensorflow'); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("kind", ["langevin", "ising", "jarzynski"])
def test_an_unknown_backend_is_refused(kind: str) -> None:
    params = params_model(kind)
    with pytest.raises(ValidationError, match="'tensorflow'"):
        params.model_validate({"backend": "jax"})
    assert params().backend in ("numba", "numpy")


def test_the_api_refuses_an_unknown_backend_and_runs_tensorflow(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"kind": "langevin", "params": {"backend": "cuda"}})
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["body.params.backend"]
    spec = {"kind": "jarzynski", "params": {**TF, "paths": 200, "duration": 0.5}}
    done = client.get(f"/v1/jobs/{submit(client, spec)['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["backend"] == "tensorflow"
    assert done["device"] in ("CPU:0", "GPU:0")


# --- langevin --------------------------------------------------------------------------------


def test_langevin_exact_ou_update() -> None:
    params = {"stiffness": 2.0, "temperature": 0.5, "friction": 1.5, "steps": 2000}
    _, result = run("langevin", {**params, "record_every": 20})
    assert result["integrator"] == "exact"
    assert_within(result, "stationary_variance", 0.5 / 2.0)
    assert_within(result, "stationary_mean_energy", 0.5 / 2)  # equipartition
    assert_within(result, "mean_position", 0.0)
    acf = result["autocorrelation"]
    exact = 0.25 * np.exp(-np.asarray(acf["lag_times"]) / 0.75)
    assert acf["lag_times"][-1] > 0.75
    assert np.all(np.abs(np.asarray(acf["values"]) - exact) < Z * np.asarray(acf["values_se"]))


def test_langevin_euler_maruyama_has_its_own_stationary_variance() -> None:
    params = {"integrator": "euler_maruyama", "dt": 0.2, "steps": 2000, "record_every": 20}
    _, result = run("langevin", params)
    assert_within(result, "stationary_variance", 1 / (1 - 0.1))
    assert abs(result["stationary_variance"] - 1.0) > Z * result["stationary_variance_se"]
    assert_within(result, "stationary_mean_energy", result["integrator_mean_energy"])


def test_langevin_double_well_matches_the_euler_maruyama_fixed_point() -> None:
    params = {"potential": "double_well", "barrier": 2.0, "well_distance": 1.2}
    _, result = run("langevin", {**params, "temperature": 0.7, "steps": 4000, "record_every": 40})
    assert_within(result, "stationary_variance", result["integrator_variance"])
    assert_within(result, "stationary_mean_energy", result["integrator_mean_energy"])


def test_langevin_records_the_same_history_as_numba() -> None:
    params = {"walkers": 500, "steps": 300, "record_every": 7, "temperature": 2.0}
    tf_reporter, tf_result = run("langevin", params)
    numba_reporter, _ = run("langevin", {**params, "backend": "numba"})
    assert tf_reporter.points.keys() == numba_reporter.points.keys()
    for name, points in tf_reporter.points.items():
        assert points.keys() == numba_reporter.points[name].keys(), name
    _, heat = tf_reporter.series("heat")
    assert heat[0] == 0.0 and heat[-1] < 0  # from a point the walkers take heat from the bath
    assert tf_result["walkers"] == 500 and len(tf_result["autocorrelation"]["values"]) > 1


# --- ising -----------------------------------------------------------------------------------


@cache
def enumerate_4x4(temperature: float, coupling: float, field: float) -> dict[str, float]:
    """Exact averages over the 2^16 states of the periodic 4×4 lattice."""
    codes = np.arange(2**16)
    s = (((codes[:, None] >> np.arange(16)) & 1) * 2 - 1).reshape(-1, 4, 4)
    pairs = (s * np.roll(s, 1, 1)).sum((1, 2)) + (s * np.roll(s, 1, 2)).sum((1, 2))
    energy = -coupling * pairs - field * s.sum((1, 2))
    weight = np.exp(-(energy - energy.min()) / temperature)
    weight /= weight.sum()
    return {"energy_per_spin": weight @ energy / 16, "magnetization": weight @ s.mean((1, 2))}


def test_ising_4x4_with_a_field_matches_exact_enumeration() -> None:
    params = {"size": 4, "field": 0.3, "temperatures": [2.5], "sweeps": 6000, "burn_in": 200}
    params["record_every"] = 500  # few points: each is a call into TensorFlow
    _, result = run("ising", params)
    entry = result["results"][0]
    exact = enumerate_4x4(2.5, 1.0, 0.3)
    for name in ("energy_per_spin", "magnetization"):
        assert_within(entry, name, exact[name])


def test_ising_onsager_and_yang_away_from_the_critical_point() -> None:
    params = {"size": 64, "temperatures": [1.8, 3.5], "sweeps": 1000, "burn_in": 300}
    params["record_every"] = 100
    _, result = run("ising", params)
    for entry in result["results"]:  # ξ ≪ 64 at both
        assert_within(entry, "energy_per_spin", onsager_energy_per_spin(entry["temperature"]))
    ordered, disordered = result["results"]
    assert_within(ordered, "abs_magnetization", yang_magnetization(1.8))
    assert 0 < disordered["abs_magnetization"] < 0.2


def test_ising_bookkeeping_and_neighbour_sums_are_exact() -> None:
    from ml.simulation.tf_backend import IsingLattice, _neighbour_sum

    size = 6  # three columns per colour: the odd rows' shifts wrap differently
    spins = np.random.default_rng(0).choice(np.array([-1, 1], np.int8), size=(size, size))
    lattice = IsingLattice(size, key=11)
    lattice.load(spins)
    np.testing.assert_array_equal(lattice.spins(), spins)
    full = np.sum([np.roll(spins, shift, axis) for shift in (1, -1) for axis in (0, 1)], axis=0)
    even = (np.arange(size) % 2 == 0)[:, None]
    for other, shift, columns in (
        (lattice.b, 1, lattice.columns[0]),
        (lattice.a, -1, lattice.columns[1]),
    ):
        np.testing.assert_array_equal(
            _neighbour_sum(other, shift, even).numpy(), full[lattice.rows, columns]
        )
    out = lattice.sweeps(thresholds(2.3, 1.0, 0.1), 5)
    assert tuple(out[-1, :2]) == lattice_sums(lattice.spins())
    assert out[:, 2].min() > 0


# --- jarzynski -------------------------------------------------------------------------------


def test_jarzynski_dragged_trap() -> None:
    t, gamma, kappa, v, t_f = 0.8, 1.5, 2.0, 1.2, 2.0
    params = {"temperature": t, "friction": gamma, "stiffness": kappa, "speed": v, "duration": t_f}
    _, result = run("jarzynski", {**params, "dt": 0.015, "paths": 20000})
    assert_within(result, "mean_work", result["mean_work_exact"])
    assert_within(result, "jarzynski_average", 1.0)  # ΔF = 0
    variance_se = result["work_variance"] * math.sqrt(2 / (result["paths"] - 1))
    se = math.hypot(variance_se, 2 * t * result["mean_work_se"])
    assert abs(result["work_variance"] - 2 * t * result["mean_work"]) < Z * se  # Var W = 2T⟨W⟩


def test_jarzynski_sudden_quench_and_crooks() -> None:
    params = {"protocol": "stiffness", "switch": "sudden", "final_stiffness": 0.7}
    _, result = run("jarzynski", {**params, "paths": 20000, "crooks": True})
    assert_within(result, "jarzynski_average", math.sqrt(1 / 0.7))
    assert_within(result, "mean_work", (0.7 - 1) / 2)
    assert_within(result, "crooks_slope", 1.0)


def test_jarzynski_landauer_erasure() -> None:
    t, energy_max = 0.9, 6.0
    params = {"protocol": "landauer", "temperature": t, "energy_max": energy_max, "dt": 0.02}
    reporter, result = run("jarzynski", params)
    delta_f = -t * math.log((1 + math.exp(-energy_max / t)) / 2)
    assert_within(result, "delta_f_estimate", delta_f, result["delta_f_se"])
    assert_within(result, "mean_work", result["mean_work_exact"])
    steps, _ = reporter.series("mean_work")
    assert steps == list(range(101))  # every step of 100 is recorded


# --- repeatability ---------------------------------------------------------------------------

SMALL = {
    "langevin": {"walkers": 300, "steps": 60, "integrator": "euler_maruyama"},
    "ising": {
        "size": 8,
        "temperatures": [2.2, 2.6],
        "sweeps": 40,
        "burn_in": 20,
        "start": "random",
    },
    "jarzynski": {"protocol": "landauer", "paths": 300, "duration": 0.5, "crooks": True},
}


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_same_seed_same_result(kind: str) -> None:
    first = run(kind, {**SMALL[kind], "seed": 5})
    assert run(kind, {**SMALL[kind], "seed": 5}) == first
    assert run(kind, {**SMALL[kind], "seed": 6})[1] != first[1]
