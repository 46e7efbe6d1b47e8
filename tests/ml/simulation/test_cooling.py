"""Newton cooling against its exact answers (THERMODYNAMICS.md section D)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from pydantic import ValidationError

from ml.core.registry import get_kind
from ml.core.reporting import MemoryReporter
from ml.simulation.cooling import CoolingParams, CoolingSpec, entropy_total, integrate

SEED = {"initial_temperature": 100, "ambient_temperature": 25, "cooling_constant": 0.1}


def run(params: dict) -> tuple[MemoryReporter, dict]:
    spec = CoolingSpec.model_validate({"kind": "cooling", "params": params})
    reporter = MemoryReporter()
    outcome = get_kind("cooling").run(spec, reporter, None)
    return reporter, outcome.result


def test_defaults_are_the_seed_example() -> None:
    p = CoolingParams()
    assert (p.initial_temperature, p.ambient_temperature, p.cooling_constant) == (100, 25, 0.1)
    assert (p.duration, p.dt, p.temperature_unit, p.method) == (10, 0.1, "celsius", "exact")


def test_exact_method_follows_the_closed_form() -> None:
    reporter, result = run({**SEED, "method": "exact"})
    steps, temps = reporter.series("temperature")
    _, times = reporter.series("time")
    expected = 25 + 75 * np.exp(-0.1 * np.asarray(times))
    np.testing.assert_allclose(temps, expected, rtol=1e-14)
    assert result["final_temperature"] == pytest.approx(25 + 75 * math.exp(-1.0), rel=1e-14)
    assert steps[-1] == 100


def test_euler_is_exactly_the_geometric_sequence() -> None:
    reporter, result = run({**SEED, "method": "euler", "dt": 0.5, "duration": 10})
    steps, temps = reporter.series("temperature")
    expected = 25 + 75 * (1 - 0.1 * 0.5) ** np.asarray(steps, dtype=float)
    np.testing.assert_allclose(temps, expected, rtol=1e-13)
    assert result["steps"] == 20


def test_rk4_error_is_fourth_order() -> None:
    exact = 25 + 75 * math.exp(-1.0)
    errors = []
    for dt in (1.0, 0.5):
        _, result = run({**SEED, "method": "rk4", "dt": dt})
        errors.append(abs(result["final_temperature"] - exact))
    # Halving h divides a 4th-order global error by ~16.
    assert 12 < errors[0] / errors[1] < 20


@pytest.mark.parametrize(
    "unit,t0,te,to_kelvin", [("celsius", 100.0, 25.0, 273.15), ("kelvin", 373.15, 298.15, 0.0)]
)
def test_entropy_total_uses_absolute_temperatures(
    unit: str, t0: float, te: float, to_kelvin: float
) -> None:
    params = {"initial_temperature": t0, "ambient_temperature": te, "heat_capacity": 2.0}
    reporter, result = run({**params, "temperature_unit": unit})
    t = result["final_temperature"] + to_kelvin
    expected = 2.0 * (math.log(t / 373.15) + (373.15 - t) / 298.15)
    assert result["entropy_total"] == pytest.approx(expected, rel=1e-9)
    _, series = reporter.series("entropy_total")
    assert series[0] == 0.0
    assert all(b >= a - 1e-15 for a, b in itertools.pairwise(series))  # 2nd law


def test_entropy_production_rate_integrates_to_entropy_total() -> None:
    reporter, result = run({**SEED, "dt": 0.001, "record_every": 1})
    _, rate = reporter.series("entropy_production")
    integral = np.trapezoid(rate, dx=0.001)
    assert integral == pytest.approx(result["entropy_total"], rel=1e-6)


def test_heating_also_produces_entropy() -> None:
    _, result = run({"initial_temperature": 5, "ambient_temperature": 80})
    assert result["final_temperature"] > 5
    assert result["entropy_total"] > 0


def test_record_every_caps_the_points_and_keeps_the_last_step() -> None:
    reporter, _ = run({**SEED, "duration": 100, "dt": 0.01})
    steps, _ = reporter.series("temperature")
    assert len(steps) <= 1001
    assert steps[-1] == 10_000
    assert reporter.fractions[-1] == 1.0


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"method": "euler", "dt": 25, "duration": 100}, "unstable"),
        ({"method": "rk4", "dt": 30, "duration": 100}, "unstable"),
        ({"initial_temperature": -300}, "absolute zero"),
        ({"temperature_unit": "kelvin", "ambient_temperature": 0}, "absolute zero"),
        ({"duration": 1e9, "dt": 1e-3}, "limit"),
        ({"duration": 10, "dt": 5e-324}, "limit"),
    ],
)
def test_bad_parameters_say_why(params: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        CoolingParams.model_validate(params)


def test_integrate_returns_float64() -> None:
    times, temps = integrate(CoolingParams(method="euler"))
    assert times.dtype == temps.dtype == np.float64
    assert entropy_total(CoolingParams(), temps).dtype == np.float64
