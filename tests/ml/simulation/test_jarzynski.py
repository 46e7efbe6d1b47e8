"""Work experiments against Jarzynski, Crooks and the closed forms (THERMODYNAMICS.md section D).

Every statistical tolerance is a number of the standard errors the kind itself reports (or,
for the work variance, the standard error of a Gaussian sample variance).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from ml.core.registry import get_kind, list_kinds
from ml.core.reporting import MemoryReporter
from ml.simulation.jarzynski import JarzynskiSpec
from ml.simulation.jarzynski_model import MAX_PATHS, JarzynskiParams

Z = 5.0  # standard errors


def run(params: dict[str, Any]) -> tuple[MemoryReporter, dict[str, Any]]:
    spec = JarzynskiSpec.model_validate({"kind": "jarzynski", "params": params})
    reporter = MemoryReporter()
    return reporter, get_kind("jarzynski").run(spec, reporter, None).result


def assert_within(
    result: dict[str, Any], name: str, expected: float, se: float | None = None
) -> None:
    se = result[f"{name}_se"] if se is None else se
    assert abs(result[name] - expected) < Z * se, (name, result[name], expected, se)


def test_registered() -> None:
    assert "jarzynski" in list_kinds()
    assert get_kind("jarzynski").spec is JarzynskiSpec


def test_dragged_trap() -> None:
    t, gamma, kappa, v, t_f = 0.8, 1.5, 2.0, 1.2, 2.0
    params = {"temperature": t, "friction": gamma, "stiffness": kappa, "speed": v, "duration": t_f}
    _, result = run({**params, "dt": 0.015, "paths": 20000})
    tau = gamma / kappa
    closed_form = gamma * v**2 * (t_f - tau * (1 - math.exp(-t_f / tau)))
    assert result["mean_work_continuum"] == pytest.approx(closed_form, rel=1e-14)
    # the exact step leaves only an O((dt/τ)²) difference from the continuum
    assert abs(result["mean_work_exact"] / closed_form - 1) < (0.015 / tau) ** 2
    assert_within(result, "mean_work", closed_form)
    assert result["delta_f_exact"] == 0.0
    assert_within(result, "jarzynski_average", 1.0)
    assert_within(result, "delta_f_estimate", 0.0, result["delta_f_se"])
    # W is Gaussian with Var W = 2T⟨W⟩: sample mean and variance are independent
    variance_se = result["work_variance"] * math.sqrt(2 / (result["paths"] - 1))
    se = math.hypot(variance_se, 2 * t * result["mean_work_se"])
    assert abs(result["work_variance"] - 2 * t * result["mean_work"]) < Z * se
    assert result["warning"] is None


def test_crooks_slope_is_one_over_t() -> None:
    _, result = run({"crooks": True})
    assert_within(result, "crooks_slope", 1 / 1.0)
    assert result["crooks_delta_f"] == pytest.approx(0.0, abs=Z * result["delta_f_se"])


def test_linear_stiffness_switch() -> None:
    _, result = run({"protocol": "stiffness", "stiffness": 1.0, "final_stiffness": 3.0})
    delta_f = 0.5 * math.log(3.0)
    assert result["delta_f_exact"] == pytest.approx(delta_f, rel=1e-14)
    assert_within(result, "delta_f_estimate", delta_f, result["delta_f_se"])
    assert_within(result, "mean_work", result["mean_work_exact"])
    assert result["mean_work"] > delta_f  # the second law: ⟨W⟩ ≥ ΔF


def test_sudden_quench_with_finite_variance() -> None:
    params = {"protocol": "stiffness", "switch": "sudden", "final_stiffness": 0.7}
    _, result = run({**params, "paths": 20000})
    assert result["exponential_work_variance_finite"] is True
    assert_within(result, "jarzynski_average", math.sqrt(1 / 0.7))
    # a quench does W = (κ1 − κ0) x²/2 on x ~ N(0, T/κ0)
    assert result["mean_work_exact"] == pytest.approx((0.7 - 1) / 2, rel=1e-12)
    assert_within(result, "mean_work", (0.7 - 1) / 2)


@pytest.mark.parametrize(
    "params",
    [
        {"switch": "sudden", "final_stiffness": 0.49},
        {"switch": "linear", "final_stiffness": 0.3, "duration": 0.5},
    ],
)
def test_infinite_variance_is_said_and_has_no_standard_error(params: dict[str, Any]) -> None:
    _, result = run({"protocol": "stiffness", "paths": 2000, **params})
    assert result["exponential_work_variance_finite"] is False
    assert "infinite" in result["warning"]
    assert result["delta_f_se"] is None and result["jarzynski_average_se"] is None
    assert math.isfinite(result["delta_f_estimate"])


def test_slow_enough_decrease_has_finite_variance() -> None:
    _, result = run({"protocol": "stiffness", "final_stiffness": 0.3, "duration": 20, "dt": 0.02})
    assert result["exponential_work_variance_finite"] is True
    assert_within(result, "delta_f_estimate", 0.5 * math.log(0.3), result["delta_f_se"])


def test_sudden_quench_variance_boundary_is_half_the_stiffness() -> None:
    for final, finite in ((0.499, False), (0.501, True)):
        params = {"protocol": "stiffness", "switch": "sudden", "final_stiffness": final}
        _, result = run({**params, "paths": 100, "duration": 0.1})
        assert result["exponential_work_variance_finite"] is finite


@pytest.mark.parametrize("energy_max,duration", [(6.0, 2.0), (3.0, 20.0)])
def test_landauer_erasure(energy_max: float, duration: float) -> None:
    t = 0.9
    params = {"protocol": "landauer", "temperature": t, "energy_max": energy_max}
    _, result = run({**params, "duration": duration, "dt": 0.02})
    delta_f = -t * math.log((1 + math.exp(-energy_max / t)) / 2)
    assert result["delta_f_exact"] == pytest.approx(delta_f, rel=1e-12)
    assert_within(result, "delta_f_estimate", delta_f, result["delta_f_se"])
    assert_within(result, "mean_work", result["mean_work_exact"])
    assert result["mean_work"] > delta_f


def test_landauer_crooks() -> None:
    _, result = run({"protocol": "landauer", "crooks": True})
    assert_within(result, "crooks_slope", 1.0)


def test_metric_history() -> None:
    reporter, result = run({"protocol": "stiffness", "duration": 30, "dt": 0.01, "paths": 500})
    steps, times = reporter.series("time")
    assert steps[0] == 0 and steps[-1] == 3000 and len(steps) <= 1001
    assert times[-1] == pytest.approx(30.0)
    _, mean_work = reporter.series("mean_work")
    _, dissipated = reporter.series("dissipated_work")
    _, delta_f = reporter.series("delta_f_exact")
    assert mean_work[0] == 0.0 and mean_work[-1] == pytest.approx(result["mean_work"])
    np.testing.assert_allclose(dissipated, np.asarray(mean_work) - delta_f, atol=1e-12)
    assert delta_f[-1] == pytest.approx(0.5 * math.log(2.0))
    assert reporter.fractions[-1] == 1.0


def test_same_seed_same_result() -> None:
    for protocol in ("drag", "landauer"):
        params = {"protocol": protocol, "paths": 500, "seed": 3, "crooks": True}
        assert run(params)[1] == run(params)[1]
        assert run(params)[1]["mean_work"] != run({**params, "seed": 4})[1]["mean_work"]


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"temperature": 0}, "temperature must be positive"),
        ({"friction": -1.0}, "friction must be positive"),
        ({"final_stiffness": 0}, "final_stiffness must be positive"),
        ({"dt": 5.0}, "at least one step"),
        ({"duration": 1e6, "dt": 1e-3}, "limit"),
        ({"paths": MAX_PATHS + 1}, "80 MB"),
        ({"paths": 1}, "greater than or equal to 2"),
        ({"speed": float("inf")}, "finite number"),
        ({"protocol": "erase"}, "landauer"),
    ],
)
def test_bad_parameters_say_why(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        JarzynskiParams.model_validate(params)


def test_example_validates_and_runs_within_budget() -> None:
    spec = JarzynskiSpec.model_validate(JarzynskiSpec.example)
    start = time.perf_counter()
    result = get_kind("jarzynski").run(spec, MemoryReporter(), None).result
    assert time.perf_counter() - start < 30
    assert_within(result, "jarzynski_average", 1.0)
