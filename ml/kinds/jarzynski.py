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

`backend: tensorflow` runs the same steps with `ml.simulation_tf` (stateless seeded draws).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from scipy.special import logsumexp

from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, StrictModel

MAX_PATHS = 2_000_000  # a handful of float64 arrays of this length: about 80 MB
MAX_STEPS = 1_000_000
MAX_RECORDED_POINTS = 1000
CROOKS_NEWTON_ITERATIONS = 50
TF_STREAMS = (1, 2)  # labels of the forward and reverse stateless streams (`stream_key`)


class JarzynskiParams(StrictModel):
    protocol: Literal["drag", "stiffness", "landauer"] = "drag"
    temperature: float = Field(1.0, description="T of the bath (k_B = 1).")
    friction: float = Field(1.0, description="γ; relaxation time τ = γ/κ.")
    stiffness: float = Field(1.0, description="κ (κ0 of the stiffness protocol).")
    final_stiffness: float = Field(2.0, description="κ1 of the stiffness protocol.")
    speed: float = Field(1.0, description="v of the drag protocol.")
    energy_max: float = Field(6.0, description="Final level ε of the landauer protocol.")
    duration: float = Field(2.0, description="Protocol time t_f.")
    dt: float = Field(0.01, description="Step; steps = round(duration/dt), dt = duration/steps.")
    paths: int = Field(10000, ge=2, description="Independent paths.")
    switch: Literal["linear", "sudden"] = Field(
        "linear",
        description="λ ramped linearly over `duration`, or switched at t = 0 then relaxed.",
    )
    crooks: bool = Field(
        False, description="Also run the reverse protocol and fit the Crooks slope (1/T)."
    )
    seed: int = Field(0, ge=0)
    backend: Literal["numpy", "tensorflow"] = Field(
        "numpy",
        description="`numpy`: vectorised over paths, the right choice on a CPU. `tensorflow`: "
        "the same protocol in TensorFlow (float64, stateless seeded draws), each stretch "
        "between metric points in one compiled loop; worth it for many paths (10⁵ and up) on a "
        "job that has a GPU (`resources.gpu`), which it uses.",
    )

    @model_validator(mode="after")
    def _check(self) -> JarzynskiParams:
        positive = ("temperature", "friction", "stiffness", "final_stiffness", "duration", "dt")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive (got {getattr(self, name)})")
        if self.steps < 1:
            raise ValueError(f"duration / dt must give at least one step (dt = {self.dt:g})")
        if self.steps > MAX_STEPS:
            raise ValueError(f"duration / dt gives {self.steps} steps; the limit is {MAX_STEPS:,}")
        if self.paths > MAX_PATHS:
            raise ValueError(
                f"paths = {self.paths} exceeds {MAX_PATHS:,}: every path keeps a few float64 "
                "values in memory, and a job is limited to about 80 MB of them"
            )
        return self

    @property
    def steps(self) -> int:
        return round(self.duration / self.dt)

    @property
    def step(self) -> float:
        return self.duration / self.steps


class JarzynskiSpec(JobSpec):
    kind: Literal["jarzynski"]
    params: JarzynskiParams = Field(default_factory=JarzynskiParams)


JarzynskiSpec.example = {
    "kind": "jarzynski",
    "name": "dragged-trap",
    "params": {
        "protocol": "drag",
        "temperature": 1.0,
        "friction": 1.0,
        "stiffness": 1.0,
        "speed": 1.0,
        "duration": 2.0,
        "dt": 0.01,
        "paths": 10000,
        "crooks": True,
        "seed": 0,
    },
}


@dataclass(frozen=True)
class Schedule:
    """λ_n for n = 0..steps: trap centres and stiffnesses, or the upper level."""

    centers: np.ndarray
    stiffnesses: np.ndarray
    levels: np.ndarray


def schedule(p: JarzynskiParams, reverse: bool = False) -> Schedule:
    if p.switch == "linear":
        fraction = np.arange(p.steps + 1) / p.steps
    else:
        fraction = np.minimum(np.arange(p.steps + 1), 1).astype(np.float64)
    if reverse:
        fraction = 1.0 - fraction
    constant = np.ones(p.steps + 1)
    zero = np.zeros(p.steps + 1)
    if p.protocol == "drag":
        return Schedule(p.speed * p.duration * fraction, p.stiffness * constant, zero)
    if p.protocol == "stiffness":
        kappa = p.stiffness + (p.final_stiffness - p.stiffness) * fraction
        return Schedule(zero, kappa, zero)
    return Schedule(zero, p.stiffness * constant, p.energy_max * fraction)


def free_energy(p: JarzynskiParams, s: Schedule) -> np.ndarray:
    """ΔF(λ_n) − ΔF(λ_0) along the schedule."""
    t = p.temperature
    if p.protocol == "landauer":
        f = -t * np.logaddexp(0.0, -s.levels / t)
        return f - f[0]
    return 0.5 * t * np.log(s.stiffnesses / s.stiffnesses[0])


def upper_probability(p: JarzynskiParams, level: np.ndarray | float) -> Any:
    """Equilibrium occupation of the upper level, 1/(1 + e^{ε/T})."""
    return 0.5 * (1.0 - np.tanh(np.asarray(level) / (2 * p.temperature)))


# --- exact answers of the discrete protocol ------------------------------------------------


def mean_work_exact(p: JarzynskiParams, s: Schedule) -> float:
    """⟨W⟩ of exactly the simulated protocol, from the moments' recursions."""
    h, t, total = p.step, p.temperature, 0.0
    if p.protocol == "landauer":
        decay = math.exp(-h * p.stiffness / p.friction)
        upper = float(upper_probability(p, s.levels[0]))
        for n in range(p.steps):
            total += upper * (s.levels[n + 1] - s.levels[n])
            target = float(upper_probability(p, s.levels[n + 1]))
            upper = target + (upper - target) * decay
        return total
    lag, variance = 0.0, t / s.stiffnesses[0]  # ⟨centre − x⟩ and Var x
    for n in range(p.steps):
        k0, k1 = s.stiffnesses[n], s.stiffnesses[n + 1]
        c0, c1 = s.centers[n], s.centers[n + 1]
        # ⟨k1 (x − c1)² − k0 (x − c0)²⟩ / 2 with ⟨x − c⟩ = −lag
        total += 0.5 * (k1 * ((lag + c1 - c0) ** 2 + variance) - k0 * (lag**2 + variance))
        a = math.exp(-k1 * h / p.friction)
        lag = a * (lag + c1 - c0)
        variance = a * a * variance + t / k1 * (1 - a * a)
    return total


def drag_mean_work_continuum(p: JarzynskiParams) -> float:
    """γ v² [t_f − τ (1 − e^{−t_f/τ})], the continuum limit of the drag protocol."""
    tau = p.friction / p.stiffness
    return p.friction * p.speed**2 * (p.duration - tau * -math.expm1(-p.duration / tau))


def exponential_work_variance_is_finite(p: JarzynskiParams, s: Schedule) -> bool:
    """Whether Var e^{−W/T} is finite, i.e. ⟨e^{−2W/T}⟩ < ∞.

    Only the stiffness protocol can fail: weighting the Gaussian state by e^{−2W/T} adds
    2Δκ/T to its precision at each switch, and the moment diverges when the precision reaches
    zero (for a sudden quench, when κ1 ≤ κ0/2). Drag work is Gaussian and two-level work bounded.
    """
    if p.protocol != "stiffness":
        return True
    precision = s.stiffnesses[0] / p.temperature
    for n in range(p.steps):
        k1 = s.stiffnesses[n + 1]
        precision += 2 * (k1 - s.stiffnesses[n]) / p.temperature
        if precision <= 0:
            return False
        a2 = math.exp(-2 * k1 * p.step / p.friction)
        precision = 1 / (a2 / precision + p.temperature / k1 * (1 - a2))
    return True


# --- simulation ------------------------------------------------------------------------------


def simulate(
    p: JarzynskiParams,
    s: Schedule,
    rng: np.random.Generator,
    record: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Work of every path; calls record(n, work) at n = 0 and after each step."""
    work = np.zeros(p.paths)
    h, t = p.step, p.temperature
    if record:
        record(0, work)
    if p.protocol == "landauer":
        decay = math.exp(-h * p.stiffness / p.friction)
        upper = rng.random(p.paths) < upper_probability(p, s.levels[0])
        for n in range(p.steps):
            work += upper * (s.levels[n + 1] - s.levels[n])
            target = upper_probability(p, s.levels[n + 1])
            upper = rng.random(p.paths) < target + (upper - target) * decay
            if record:
                record(n + 1, work)
        return work
    x = s.centers[0] + math.sqrt(t / s.stiffnesses[0]) * rng.standard_normal(p.paths)
    noise = np.empty(p.paths)
    for n in range(p.steps):
        k0, k1 = s.stiffnesses[n], s.stiffnesses[n + 1]
        c0, c1 = s.centers[n], s.centers[n + 1]
        work += 0.5 * (k1 * (x - c1) ** 2 - k0 * (x - c0) ** 2)
        a = math.exp(-k1 * h / p.friction)
        rng.standard_normal(out=noise)
        x = c1 + a * (x - c1) + math.sqrt(t / k1 * (1 - a * a)) * noise
        if record:
            record(n + 1, work)
    return work


def simulate_tf(
    p: JarzynskiParams,
    s: Schedule,
    stream: int,
    record: Callable[[int, np.ndarray], None] | None = None,
    every: int = 1,
) -> np.ndarray:
    """What :func:`simulate` does, in TensorFlow, with the draws of the seed's `stream`;
    calls record(n, work) at n = 0, every, 2·every, …, steps."""
    from ml import simulation_tf

    key = simulation_tf.stream_key(p.seed, stream)
    if p.protocol == "landauer":
        return simulation_tf.two_level_work(
            s.levels,
            upper_probability(p, s.levels),
            decay=math.exp(-p.step * p.stiffness / p.friction),
            paths=p.paths,
            key=key,
            every=every,
            record=record,
        )
    return simulation_tf.harmonic_work(
        s.centers,
        s.stiffnesses,
        step=p.step,
        friction=p.friction,
        temperature=p.temperature,
        paths=p.paths,
        key=key,
        every=every,
        record=record,
    )


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


@register_kind(
    name="jarzynski",
    spec=JarzynskiSpec,
    summary="Work on a dragged or squeezed trap, or a Landauer erasure; Jarzynski and Crooks.",
    category="simulation",
)
def run(spec: JarzynskiSpec, reporter: Reporter, context: RunContext | None = None) -> RunOutcome:
    p = spec.params
    forward_rng, reverse_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(p.seed).spawn(2)
    )
    s = schedule(p)
    delta_f = free_energy(p, s)
    every = max(1, math.ceil(p.steps / MAX_RECORDED_POINTS))
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
    device = "cpu"
    if p.backend == "tensorflow":
        from ml.simulation_tf import device_name

        device = device_name()
    return RunOutcome(result=result, device=device)
