"""What the job page says about a job's training telemetry, beyond its numbers.

- A metric whose every point is null for the job (the telemetry records None, stored as NULL,
  when it cannot define a value) is hidden from the latest values; its reason, from the
  conditions under which `ml.core.telemetry.Thermometer` reports None, is shown on hover. Every
  optimizer is read as preconditioned heavy-ball SGD (docs/thermodynamics.md), so no metric is
  undefined for an optimizer as such: whether one is depends on what the job measured (too few
  measuring points, `telemetry.heat` off, ...), and the reason says so.
- `equilibrium` (1 or 0; null while its window is short) is a badge, its `equilibrium_statistic`
  in the badge's tooltip.
- `grad_noise_scale` is a lower bound when `grad_noise_scale_lower_bound` is 1 at its step: it
  is shown as "≥ value".

Metrics of prefixed trainers (a GAN's `d_`, `g_`; DEC's and DCN's `pretrain_`) are treated alike;
a job without a training section (a simulation) has no telemetry, so no reason of it. The
dashboard's script applies the same rules to the points of the live event stream, with the
texts from `page_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ml.core.telemetry import (
    EQUILIBRIUM_MIN_POINTS,
    EQUILIBRIUM_TOLERANCE,
    EQUILIBRIUM_WINDOW,
    EQUILIBRIUM_Z,
)
from service.db.tables import MetricPoint

EQUILIBRIUM = "equilibrium"
STATISTIC = "equilibrium_statistic"
NOISE_SCALE = "grad_noise_scale"
BOUND = "grad_noise_scale_lower_bound"
PREFIXES = ("d_", "g_", "pretrain_")  # the `metric_prefix` of the kinds with several trainers

# When Thermometer.update reports None, by metric (ml/core/telemetry.py).
NULL_REASONS = {
    "temperature_noise": "it needs an estimate of tr(PΣ) from the measuring points' micro-batch "
    "gradients.",
    "temperature_virial": "⟨(θ − θ̄)·g⟩ needs θ̄, a running mean of θ over earlier measuring "
    "points, and the first measuring point has none.",
    "fdr_ratio": "⟨(θ − θ̄)·g⟩ / [(α/2)(1 + μ)⟨vᵀPv⟩] needs both averages, with ⟨vᵀPv⟩ of the "
    "heavy-ball buffer positive.",
    EQUILIBRIUM: f"the test needs {EQUILIBRIUM_MIN_POINTS} measuring points with both sides of the "
    "fluctuation–dissipation relation (after the first, which has no θ̄).",
    STATISTIC: f"t = mean r / SE needs {EQUILIBRIUM_MIN_POINTS} measuring points with both sides "
    "of the fluctuation–dissipation relation, and residuals that vary.",
    NOISE_SCALE: "neither |G|² nor E|g_B|² was estimated positive.",
    "weight_entropy": "the parameters' fluctuations need three measuring points (a centre, then "
    "the variance of two deviations from it).",
    "free_energy": "U − T·ΔS needs weight_entropy and a temperature (temperature_noise, else "
    "temperature_virial).",
    "heat": "the two-pass heat is not measured (telemetry.heat is off).",
    "entropy_production": "⟨Q⟩/T needs the heat (telemetry.heat) and a positive temperature.",
    "entropy_production_excess": "it needs the heat (telemetry.heat), a positive temperature and "
    "tr(PΣ).",
}
OTHER_REASON = "no finite value was recorded."
EQUILIBRIUM_RULE = (
    f"1 when the fluctuation–dissipation relation ⟨(θ − θ̄)·g⟩ = (α/2)(1 + μ)⟨vᵀPv⟩ holds to "
    f"{EQUILIBRIUM_TOLERANCE:.0%} over the last {EQUILIBRIUM_WINDOW} measuring points: "
    f"|mean r| + {EQUILIBRIUM_Z:g}·SE < {EQUILIBRIUM_TOLERANCE:g}·mean (α/2)(1 + μ)vᵀPv."
)
BOUND_TITLE = (
    "A lower bound: |G|² was not resolved from the gradient noise, so tr Σ / E|g_B|² ≤ B_simple "
    "is shown (grad_noise_scale_lower_bound = 1)."
)

Latest = dict[str, tuple[int, float | None]]


def base_name(name: str) -> str:
    """The name without a trainer's prefix (`d_fdr_ratio` -> `fdr_ratio`)."""
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def undefined_names(session: Session, *, job_id: str) -> list[str]:
    """The job's metrics whose every point is null, by name."""
    query = (
        select(MetricPoint.name)
        .where(MetricPoint.job_id == job_id)
        .group_by(MetricPoint.name)
        .having(func.count(MetricPoint.value) == 0)
        .order_by(MetricPoint.name)
    )
    return list(session.scalars(query))


def optimizer_of(spec: dict[str, Any]) -> str | None:
    training = spec.get("training")
    optimizer = training.get("optimizer") if isinstance(training, dict) else None
    name = optimizer.get("name") if isinstance(optimizer, dict) else None
    return name if isinstance(name, str) else None


def hidden_intro(kind: str, optimizer: str | None) -> str:
    job = f"this {kind} job" + (f" (optimizer {optimizer})" if optimizer else "")
    return f"Every point of it so far is null for {job}:"


def reason(name: str, intro: str, *, trained: bool) -> str:
    why = NULL_REASONS.get(base_name(name), OTHER_REASON) if trained else OTHER_REASON
    return f"{intro} {why}"


def number(value: float | None) -> str:
    return "null" if value is None else f"{value:.6g}"


@dataclass
class Row:
    name: str
    step: int
    value: str
    title: str | None = None


@dataclass
class Badge:
    name: str
    state: str  # in | out | unknown
    label: str
    title: str


def value_row(name: str, latest: Latest) -> Row:
    step, value = latest[name]
    text, title = number(value), None
    if base_name(name) == NOISE_SCALE and value is not None:
        bound = latest.get(name[: -len(NOISE_SCALE)] + BOUND)
        if bound is not None and bound[0] == step and bound[1] == 1.0:
            text, title = f"≥ {text}", BOUND_TITLE
    return Row(name, step, text, title)


def badge(name: str, latest: Latest) -> Badge:
    prefix = name[: -len(EQUILIBRIUM)]
    who = f"{prefix.rstrip('_')}: " if prefix else ""
    step, value = latest[name]
    state = "unknown" if value is None else "in" if value == 1.0 else "out"
    label = {"in": "in equilibrium", "out": "not in equilibrium"}.get(state, "equilibrium untested")
    statistic = latest.get(prefix + STATISTIC)
    if state == "unknown":
        title = f"At step {step}: {NULL_REASONS[EQUILIBRIUM]} {EQUILIBRIUM_RULE}"
    else:
        t = number(statistic[1]) if statistic is not None and statistic[0] == step else "null"
        title = f"{prefix}{STATISTIC} t = {t} at step {step}. {EQUILIBRIUM_RULE}"
    return Badge(name, state, who + label, title)


@dataclass
class JobNotes:
    rows: list[Row]
    hidden: dict[str, str]  # name -> why it is hidden
    badges: list[Badge]
    page: dict[str, Any]  # for the page's script


def job_notes(
    session: Session, *, job_id: str, kind: str, spec: dict[str, Any], latest: Latest
) -> JobNotes:
    optimizer = optimizer_of(spec)
    intro = hidden_intro(kind, optimizer)
    undefined = set(undefined_names(session, job_id=job_id))
    trained = optimizer is not None
    hidden = {name: reason(name, intro, trained=trained) for name in sorted(undefined)}
    rows = [value_row(name, latest) for name in latest if name not in undefined]
    badges = [badge(name, latest) for name in latest if trained and base_name(name) == EQUILIBRIUM]
    page = {
        "latest": {name: list(point) for name, point in latest.items()},
        "defined": sorted(set(latest) - undefined),
        "notes": {
            "trained": trained,
            "intro": intro,
            "reasons": NULL_REASONS if trained else {},
            "prefixes": PREFIXES,
            "other": OTHER_REASON,
            "equilibrium_rule": EQUILIBRIUM_RULE,
            "bound_title": BOUND_TITLE,
        },
    }
    return JobNotes(rows, hidden, badges, page)
