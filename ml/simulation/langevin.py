"""Overdamped Langevin dynamics of many independent walkers, as a job kind.

γ dx = −U'(x) dt + √(2γT) dW with U = κx²/2 (harmonic, the Ornstein–Uhlenbeck process) or
U = b((x/d)² − 1)² (double well). The exact update of the harmonic case is
x' = a x + √((T/κ)(1 − a²)) ξ with a = e^{−h/τ}, τ = γ/κ; Euler–Maruyama's own stationary
variance is (T/κ)/(1 − h/(2τ)). With no work done on the walkers the heat given to the bath is
−Δ⟨U⟩, so `entropy_production` is its rate over T.

Stationary statistics use the second half of the steps. Walkers are split into `RNG_BLOCKS`
fixed blocks, each with its own random stream: the blocks make the result independent of the
thread count and are the independent replicates of the standard errors. `backend: tensorflow`
steps the walkers with `ml.simulation.tf_backend` instead (same blocks, same summaries).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ml.core.registry import register_kind
from ml.core.reporting import JobFailed, Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, full_example
from ml.simulation.langevin_kernels import RNG_BLOCKS, walkers_for
from ml.simulation.langevin_model import (
    LangevinParams,
    boltzmann_moments,
    coefficients,
    integrator_moments,
)
from ml.simulation.shared import recording_stride

ACF_WALKERS = 1000
ACF_GROUPS = 20
MAX_ACF_LAGS = 100
BURN_IN_RELAXATION_TIMES = 5.0


class LangevinSpec(JobSpec):
    """Overdamped Langevin walkers in a harmonic or double-well potential."""

    kind: Literal["langevin"]
    params: LangevinParams = Field(default_factory=LangevinParams)


LangevinSpec.example = full_example(
    "langevin", "ou-euler-maruyama", LangevinParams, steps=2000, integrator="euler_maruyama"
)


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


@register_kind(spec=LangevinSpec)
def run(spec: LangevinSpec, reporter: Reporter, context: RunContext | None = None) -> RunOutcome:
    p = spec.params
    walkers = walkers_for(p)
    x = walkers.positions()
    burn_in = p.steps // 2
    every = recording_stride(p.steps, p.record_every)
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
