"""Work experiments and the Jarzynski equality ⟨e^{−W/T}⟩ = e^{−ΔF/T}, as a job kind.

Protocols, each started from equilibrium at the initial control value λ_0:

- `drag`: a harmonic trap U = κ(x − vt)²/2 moved at speed v (ΔF = 0);
- `stiffness`: U = κ(t)x²/2 switched from `stiffness` to `final_stiffness` (ΔF = (T/2) ln(κ1/κ0));
- `landauer`: a two-level system whose upper level ε is raised from 0 to `energy_max`
  (ΔF = −T ln[(1 + e^{−ε_max/T})/2] → T ln 2).

Each of `steps` = duration/dt steps first changes λ at fixed state, adding W += U(x, λ_{n+1}) −
U(x, λ_n), then relaxes the state at fixed λ_{n+1} with the exact propagator (the OU update, or
the two-state master equation), so the equality holds for any dt. The harmonic protocols relax
with τ = friction/stiffness(t); the two-level system with τ = friction/stiffness.

`backend: tensorflow` runs the same steps with `ml.simulation.tf_backend` (stateless seeded draws).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field
from scipy.special import logsumexp

from ml.core.registry import register_kind
from ml.core.reporting import CPU, Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, full_example
from ml.simulation.jarzynski_kernels import simulate, simulate_tf
from ml.simulation.jarzynski_model import (
    JarzynskiParams,
    Schedule,
    drag_mean_work_continuum,
    exponential_work_variance_is_finite,
    free_energy,
    mean_work_exact,
    schedule,
)
from ml.simulation.shared import recording_stride

CROOKS_NEWTON_ITERATIONS = 50
TF_STREAMS = (1, 2)  # labels of the forward and reverse stateless streams (`stream_key`)


class JarzynskiSpec(JobSpec):
    """Work on a dragged or squeezed trap, or a Landauer erasure; Jarzynski and Crooks."""

    kind: Literal["jarzynski"]
    params: JarzynskiParams = Field(default_factory=JarzynskiParams)


JarzynskiSpec.example = full_example("jarzynski", "dragged-trap", JarzynskiParams, crooks=True)


def free_energy_estimate(work: np.ndarray, temperature: float) -> float:
    """−T ln ⟨e^{−W/T}⟩, computed without overflow."""
    return float(-temperature * (logsumexp(-work / temperature) - math.log(len(work))))


def crooks_fit(
    forward: np.ndarray, reverse: np.ndarray, temperature: float
) -> dict[str, float | None]:
    """Fit ln[P_F(W)/P_R(−W)] = b (W − ΔF) by maximum likelihood; Crooks says b = 1/T.

    Pooling W_F (label 1) with −W_R (label 0), Crooks makes the label's log-odds linear in W:
    a + bW with a = ln(n_F/n_R) − bΔF; the logistic regression needs no histogram bins
    (with b fixed at 1/T it would be Bennett's acceptance ratio).
    """
    fit: dict[str, float | None] = dict.fromkeys(("crooks_slope", "crooks_slope_se"))
    fit["crooks_delta_f"] = None
    if not min(forward.max(), -reverse.min()) > max(forward.min(), -reverse.max()):
        return fit  # the two distributions do not overlap: the slope is not identified
    w = np.concatenate([forward, -reverse])
    label = np.concatenate([np.ones(len(forward)), np.zeros(len(reverse))])
    design = np.stack([np.ones_like(w), (w - w.mean()) / w.std()], axis=1)
    coef = np.zeros(2)
    for _ in range(CROOKS_NEWTON_ITERATIONS):
        prob = 0.5 * (1 + np.tanh(0.5 * design @ coef))
        information = design.T @ (design * (prob * (1 - prob))[:, None])
        step = np.linalg.solve(information, design.T @ (label - prob))
        coef += step
        if np.abs(step).max() < 1e-10:
            break
    else:
        return fit
    covariance = np.linalg.inv(information)
    slope = coef[1] / w.std()
    intercept = coef[0] - slope * w.mean()
    fit["crooks_slope"] = float(slope)
    fit["crooks_slope_se"] = float(math.sqrt(covariance[1, 1]) / w.std())
    if slope != 0:
        fit["crooks_delta_f"] = float((math.log(len(forward) / len(reverse)) - intercept) / slope)
    return fit


def summarize(p: JarzynskiParams, s: Schedule, work: np.ndarray) -> dict[str, Any]:
    t, n = p.temperature, len(work)
    exponent = -work / t
    shifted = np.exp(exponent - exponent.max())  # e^{−W/T} up to the factor e^{max}
    finite = exponential_work_variance_is_finite(p, s)
    delta_f = free_energy_estimate(work, t)
    relative_se = float(shifted.std(ddof=1) / shifted.mean() / math.sqrt(n))
    average = math.exp(-delta_f / t) if -delta_f / t < 700 else math.inf
    exact = float(free_energy(p, s)[-1])
    warning = None
    if not finite:
        warning = (
            "the variance of e^{−W/T} is infinite for this protocol (a switch to κ1 < κ0/2 that "
            "is too fast for the trap to follow): the estimate converges slowly and erratically "
            "and a standard error means nothing, so delta_f_se is null"
        )
    return {
        "mean_work": float(work.mean()),
        "mean_work_se": float(work.std(ddof=1) / math.sqrt(n)),
        "work_variance": float(work.var(ddof=1)),
        "jarzynski_average": average,
        "jarzynski_average_se": average * relative_se if finite else None,
        "delta_f_estimate": delta_f,
        "delta_f_se": t * relative_se if finite else None,
        "delta_f_exact": exact,
        "jarzynski_average_exact": math.exp(-exact / t),
        "mean_work_exact": float(mean_work_exact(p, s)),
        "dissipated_work": float(work.mean()) - exact,
        "exponential_work_variance_finite": finite,
        "warning": warning,
    }


@register_kind(spec=JarzynskiSpec)
def run(spec: JarzynskiSpec, reporter: Reporter, context: RunContext | None = None) -> RunOutcome:
    p = spec.params
    forward_rng, reverse_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(p.seed).spawn(2)
    )
    s = schedule(p)
    delta_f = free_energy(p, s)
    every = recording_stride(p.steps)
    progress_share = 0.5 if p.crooks else 1.0

    def record(n: int, work: np.ndarray) -> None:
        if n % every and n != p.steps:
            return
        mean = float(work.mean())
        reporter.metrics(
            n,
            {
                "time": n * p.step,
                "mean_work": mean,
                "dissipated_work": mean - float(delta_f[n]),
                "delta_f_estimate": free_energy_estimate(work, p.temperature),
                "delta_f_exact": float(delta_f[n]),
            },
        )
        reporter.progress(progress_share * n / p.steps, step=n, total_steps=p.steps)

    def work_of(protocol: Schedule, direction: int, on_step: Any = None) -> np.ndarray:
        if p.backend == "numpy":
            return simulate(p, protocol, (forward_rng, reverse_rng)[direction], on_step)
        return simulate_tf(p, protocol, TF_STREAMS[direction], on_step, every)

    work = work_of(s, 0, record)
    result = summarize(p, s, work)
    if p.protocol == "drag":
        result["mean_work_continuum"] = drag_mean_work_continuum(p)
    if p.crooks:
        reverse = work_of(schedule(p, reverse=True), 1)
        result.update(crooks_fit(work, reverse, p.temperature))
        result["reverse_mean_work"] = float(reverse.mean())
        reporter.progress(1.0, step=p.steps, total_steps=p.steps)
    result.update(
        {
            "protocol": p.protocol,
            "switch": p.switch,
            "steps": p.steps,
            "dt": p.step,
            "paths": p.paths,
            "backend": p.backend,
        }
    )
    device = CPU
    if p.backend == "tensorflow":
        from ml.simulation.tf_backend import device_name

        device = device_name()
    return RunOutcome(result=result, device=device)
