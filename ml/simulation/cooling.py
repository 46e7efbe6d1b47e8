"""Newton's law of cooling, the seed article's first example, as a job kind.

dT/dt = -k (T - T_env). A body of heat capacity C cooling in a bath at T_env produces entropy
ΔS_total = C [ln(T/T0) + (T0 - T)/T_env] >= 0 (absolute temperatures), at the rate
C k (T - T_env)^2 / (T T_env).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ml.core.registry import PlotLayout, register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, StrictModel, full_example
from ml.simulation.shared import record_every_field, recording_stride

KELVIN_OFFSET = 273.15
MAX_STEPS = 10_000_000
# |1 - z + z^2/2 - z^3/6 + z^4/24| < 1 holds for 0 < z < 2.785293563...
RK4_STABILITY_LIMIT = 2.785293563405282


class CoolingParams(StrictModel):
    initial_temperature: float = Field(100.0, description="T0, in `temperature_unit`.")
    ambient_temperature: float = Field(25.0, description="T_env, in `temperature_unit`.")
    temperature_unit: Literal["celsius", "kelvin"] = "celsius"
    cooling_constant: float = Field(0.1, gt=0, description="k, per unit of time.")
    duration: float = Field(10.0, gt=0, description="Simulated time, from t = 0.")
    dt: float = Field(0.1, gt=0, description="Time step h; steps = round(duration / dt).")
    method: Literal["exact", "euler", "rk4"] = "exact"
    heat_capacity: float = Field(1.0, gt=0, description="C, in heat per degree.")
    record_every: int | None = record_every_field()

    @model_validator(mode="after")
    def _check(self) -> CoolingParams:
        for field in ("initial_temperature", "ambient_temperature"):
            if self.absolute(getattr(self, field)) <= 0:
                raise ValueError(f"{field} must be above absolute zero")
        ratio = self.duration / self.dt
        if not math.isfinite(ratio) or ratio > MAX_STEPS:
            raise ValueError(f"duration / dt gives {ratio:g} steps; the limit is {MAX_STEPS}")
        if self.steps > MAX_STEPS:
            raise ValueError(f"duration / dt gives {self.steps} steps; the limit is {MAX_STEPS}")
        if self.steps < 1:
            raise ValueError("duration / dt must give at least one step")
        kh = self.cooling_constant * self.dt
        if self.method == "euler" and kh >= 2:
            raise ValueError(
                f"explicit Euler is unstable for cooling_constant * dt >= 2 (got {kh:g}); "
                "lower dt or use method 'exact'"
            )
        if self.method == "rk4" and kh >= RK4_STABILITY_LIMIT:
            raise ValueError(
                f"RK4 is unstable for cooling_constant * dt >= {RK4_STABILITY_LIMIT:.4f} "
                f"(got {kh:g}); lower dt or use method 'exact'"
            )
        return self

    @property
    def steps(self) -> int:
        return round(self.duration / self.dt)

    def absolute(self, temperature: float) -> float:
        return temperature + (KELVIN_OFFSET if self.temperature_unit == "celsius" else 0.0)


class CoolingSpec(JobSpec):
    """Newton cooling of a body in a bath, with its entropy production."""

    kind: Literal["cooling"]
    params: CoolingParams = Field(default_factory=CoolingParams)


CoolingSpec.example = full_example("cooling", "seed-cooling", CoolingParams, method="rk4")


def exact_temperature(p: CoolingParams, t: np.ndarray) -> np.ndarray:
    t0, te = p.initial_temperature, p.ambient_temperature
    return te + (t0 - te) * np.exp(-p.cooling_constant * t)


def integrate(p: CoolingParams) -> tuple[np.ndarray, np.ndarray]:
    """Times and temperatures (in the params' unit) at every step, float64."""
    n, h, k, te = p.steps, p.dt, p.cooling_constant, p.ambient_temperature
    times = np.arange(n + 1, dtype=np.float64) * h
    if p.method == "exact":
        return times, exact_temperature(p, times)
    if p.method == "euler":
        factor = 1.0 - k * h
    else:  # rk4 on a linear ODE is multiplication by its stability polynomial
        z = -k * h
        factor = 1.0 + z + z * z / 2 + z**3 / 6 + z**4 / 24
    excess = (p.initial_temperature - te) * factor ** np.arange(n + 1, dtype=np.float64)
    return times, te + excess


def entropy_total(p: CoolingParams, temperature: np.ndarray) -> np.ndarray:
    """ΔS of body plus bath since t = 0, with absolute temperatures."""
    c = p.heat_capacity
    t_abs = p.absolute(temperature)  # type: ignore[arg-type]
    t0, te = p.absolute(p.initial_temperature), p.absolute(p.ambient_temperature)
    return c * (np.log(t_abs / t0) + (t0 - t_abs) / te)


def entropy_production_rate(p: CoolingParams, temperature: np.ndarray) -> np.ndarray:
    """dS_total/dt = C k (T - T_env)^2 / (T T_env), absolute temperatures."""
    t_abs = p.absolute(temperature)  # type: ignore[arg-type]
    te = p.absolute(p.ambient_temperature)
    return p.heat_capacity * p.cooling_constant * (t_abs - te) ** 2 / (t_abs * te)


def _temperature_units(spec: Mapping[str, Any]) -> dict[str, str]:
    """The plot's units that follow the job's `temperature_unit`."""
    unit = (spec.get("params") or {}).get("temperature_unit", "celsius")
    symbol = "K" if unit == "kelvin" else "°C"
    return {"temperature": symbol, "heat": f"heat capacity × {symbol}"}


PLOT = PlotLayout(
    "integration step",
    {"entropy": "heat capacity units", "entropy_production": "heat capacity / time"},
    spec_units=_temperature_units,
)


@register_kind(spec=CoolingSpec, plot=PLOT)
def run(spec: CoolingSpec, reporter: Reporter, context: RunContext | None = None) -> RunOutcome:
    p = spec.params
    times, temperature = integrate(p)
    entropy = entropy_total(p, temperature)
    production = entropy_production_rate(p, temperature)
    heat = p.heat_capacity * (p.initial_temperature - temperature)
    every = recording_stride(p.steps, p.record_every)
    recorded = list(range(0, p.steps + 1, every))
    if recorded[-1] != p.steps:
        recorded.append(p.steps)
    for i, step in enumerate(recorded):
        reporter.metrics(
            step,
            {
                "time": float(times[step]),
                "temperature": float(temperature[step]),
                "entropy_total": float(entropy[step]),
                "entropy_production": float(production[step]),
                "heat": float(heat[step]),
            },
        )
        reporter.progress((i + 1) / len(recorded), step=step, total_steps=p.steps)
    final = float(temperature[-1])
    result: dict[str, Any] = {
        "final_temperature": final,
        "entropy_total": float(entropy[-1]),
        "heat_released": float(heat[-1]),
        "exact_final_temperature": float(exact_temperature(p, times[-1:])[0]),
        "final_time": float(times[-1]),
        "steps": p.steps,
        "method": p.method,
        "temperature_unit": p.temperature_unit,
    }
    return RunOutcome(result=result)
