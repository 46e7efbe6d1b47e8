"""Overdamped Langevin walkers against their exact answers (THERMODYNAMICS.md section D).

Every statistical tolerance is a number of the standard errors the kind itself reports.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numba
import numpy as np
import pytest
from pydantic import ValidationError
from scipy import integrate

from ml.core.registry import get_kind, list_kinds
from ml.core.reporting import MemoryReporter
from ml.simulation.langevin import LangevinSpec
from ml.simulation.langevin_model import MAX_WALKERS, LangevinParams

Z = 5.0  # standard errors


def run(params: dict[str, Any]) -> tuple[MemoryReporter, dict[str, Any]]:
    spec = LangevinSpec.model_validate({"kind": "langevin", "params": params})
    reporter = MemoryReporter()
    return reporter, get_kind("langevin").run(spec, reporter, None).result


def assert_within(result: dict[str, Any], name: str, expected: float) -> None:
    se = result[f"{name}_se"]
    assert abs(result[name] - expected) < Z * se, (name, result[name], expected, se)


def test_registered() -> None:
    assert "langevin" in list_kinds()
    assert get_kind("langevin").spec is LangevinSpec
    assert get_kind("langevin").category == "simulation"


def test_exact_ou_update_has_the_stationary_variance_and_equipartition() -> None:
    params = {"stiffness": 2.0, "temperature": 0.5, "friction": 1.5, "steps": 2000}
    _, result = run(params)
    assert result["integrator"] == "exact"
    assert result["exact_variance"] == result["integrator_variance"] == 0.25
    assert_within(result, "stationary_variance", 0.5 / 2.0)
    assert_within(result, "stationary_mean_energy", 0.5 / 2)  # ⟨κx²/2⟩ = T/2
    assert_within(result, "mean_position", 0.0)
    assert result["warning"] is None


def test_autocorrelation_is_the_exponential_of_the_integrator() -> None:
    _, result = run({"stiffness": 2.0, "temperature": 0.5, "friction": 1.5, "steps": 2000})
    acf = result["autocorrelation"]
    tau = 1.5 / 2.0
    exact = 0.25 * np.exp(-np.asarray(acf["lag_times"]) / tau)
    np.testing.assert_allclose(acf["exact"], exact, rtol=1e-12)
    assert acf["lag_times"][-1] > tau  # the decay is resolved
    errors = np.abs(np.asarray(acf["values"]) - exact)
    assert np.all(errors < Z * np.asarray(acf["values_se"]))


def test_euler_maruyama_has_its_own_stationary_variance() -> None:
    # h/τ = 0.2: the integrator's variance (T/κ)/(1 − h/2τ) is 11% above T/κ.
    _, result = run({"integrator": "euler_maruyama", "dt": 0.2, "steps": 2000})
    assert result["integrator_variance"] == pytest.approx(1 / (1 - 0.1), rel=1e-14)
    assert result["exact_variance"] == 1.0
    assert_within(result, "stationary_variance", result["integrator_variance"])
    assert abs(result["stationary_variance"] - 1.0) > Z * result["stationary_variance_se"]
    assert_within(result, "stationary_mean_energy", result["integrator_mean_energy"])


def test_double_well_matches_the_euler_maruyama_fixed_point_and_the_boltzmann_law() -> None:
    params = {
        "potential": "double_well",
        "barrier": 2.0,
        "well_distance": 1.2,
        "temperature": 0.7,
        "steps": 4000,
    }
    _, result = run(params)
    assert result["integrator"] == "euler_maruyama"
    assert_within(result, "stationary_variance", result["integrator_variance"])
    assert_within(result, "stationary_mean_energy", result["integrator_mean_energy"])

    def u(x: float) -> float:
        return 2.0 * ((x / 1.2) ** 2 - 1) ** 2

    def moment(f: Any) -> float:
        return integrate.quad(lambda x: f(x) * math.exp(-u(x) / 0.7), -6, 6, points=[-1.2, 1.2])[0]

    z = moment(lambda x: 1.0)
    assert result["exact_variance"] == pytest.approx(moment(lambda x: x * x) / z, rel=1e-8)
    assert result["exact_mean_energy"] == pytest.approx(moment(u) / z, rel=1e-8)
    # dt → 0 takes the integrator's law to Boltzmann's
    assert result["integrator_variance"] == pytest.approx(result["exact_variance"], rel=0.05)


def test_metric_history_and_entropy_production() -> None:
    reporter, result = run({"walkers": 4000, "steps": 3000, "temperature": 2.0})
    steps, times = reporter.series("time")
    assert steps[0] == 0 and steps[-1] == 3000 and len(steps) <= 1001
    assert times[-1] == pytest.approx(result["final_time"])
    _, variance = reporter.series("position_variance")
    assert variance[0] == 0.0  # every walker starts at initial_position
    _, energy = reporter.series("mean_energy")
    _, heat = reporter.series("heat")
    np.testing.assert_allclose(heat, energy[0] - np.asarray(energy), atol=1e-12)
    # the recorded rate integrates to the heat given to the bath over T
    rate_steps, rate = reporter.series("entropy_production")
    dt = np.diff(np.asarray(times))
    assert rate_steps == steps[1:]
    assert np.sum(np.asarray(rate) * dt) == pytest.approx(heat[-1] / 2.0, abs=1e-12)
    # from a point the walkers take T/2 from the bath on their way to equipartition
    assert heat[-1] < 0
    assert reporter.fractions[-1] == 1.0


def test_same_seed_same_result_and_independent_of_threads() -> None:
    params = {"walkers": 3000, "steps": 400, "seed": 7, "integrator": "euler_maruyama"}
    _, first = run(params)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        _, single = run(params)
    finally:
        numba.set_num_threads(threads)
    _, other = run({**params, "seed": 8})
    assert first == single
    assert first["stationary_variance"] != other["stationary_variance"]


def test_short_burn_in_is_reported() -> None:
    _, result = run({"steps": 200, "walkers": 500})  # half of 2τ is unmeasured
    assert "relaxation times" in result["warning"]


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"integrator": "euler_maruyama", "dt": 2.0}, "unstable for dt >= 2τ"),
        ({"integrator": "euler_maruyama", "stiffness": 4.0, "dt": 0.6}, "unstable"),
        ({"potential": "double_well", "barrier": 10.0, "dt": 0.1}, "unstable"),
        ({"potential": "double_well", "integrator": "exact"}, "only the harmonic"),
        ({"temperature": 0}, "temperature must be positive"),
        ({"temperature": -1.0}, "temperature must be positive"),
        ({"stiffness": 0}, "stiffness must be positive"),
        ({"friction": -2.0}, "friction must be positive"),
        ({"temperature": float("nan")}, "finite number"),
        ({"walkers": MAX_WALKERS + 1}, "up to 48 bytes in memory with the numba backend"),
        (
            {"walkers": MAX_WALKERS + 1, "backend": "tensorflow"},
            "up to 140 bytes in memory with the tensorflow backend, so a job is .* 667 MiB",
        ),
        ({"steps": 10**9}, "limit"),
        ({"potential": "triple_well"}, "harmonic"),
    ],
)
def test_bad_parameters_say_why(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        LangevinParams.model_validate(params)


def test_default_integrator_follows_the_potential() -> None:
    assert LangevinParams().integrator == "exact"
    assert LangevinParams(potential="double_well").integrator == "euler_maruyama"


def test_example_validates_and_runs_within_budget() -> None:
    spec = LangevinSpec.model_validate(LangevinSpec.example)
    start = time.perf_counter()
    result = get_kind("langevin").run(spec, MemoryReporter(), None).result
    assert time.perf_counter() - start < 30
    assert_within(result, "stationary_variance", result["integrator_variance"])
