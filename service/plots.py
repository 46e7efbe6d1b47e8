"""A job's metric history drawn as a PNG: one panel per metric, related thermodynamic metrics
sharing a panel (energies, work and free energy, temperatures, ...), with units on the axes.

matplotlib is imported on first use (not at API start-up), and only through its object API with
the Agg canvas: pyplot's global state is not safe in a threaded server.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ml.core.registry import PlotLayout, UnknownKind, default_plot, get_kind

Series = Mapping[str, Mapping[str, Sequence[Any]]]  # name -> {"steps": [...], "values": [...]}

MAX_POINTS_PER_LINE = 4000
COLUMNS = 2
PANEL_SIZE = (5.2, 2.9)  # inches, at DPI
DPI = 100
AXES = frozenset({"time", "epoch"})  # drawn as the x axis, not as panels, unless asked for


@dataclass(frozen=True)
class Group:
    key: str
    title: str
    members: tuple[str, ...]


# Panels that hold several metrics, in this order; every other metric gets a panel of its own.
GROUPS = (
    Group("energy", "Energy and free energy", ("internal_energy", "free_energy", "mean_energy")),
    Group("energy_per_spin", "Energy per spin", ("energy_per_spin",)),
    Group(
        "work",
        "Work and free energy",
        ("mean_work", "dissipated_work", "delta_f_estimate", "delta_f_exact"),
    ),
    Group("loss", "Loss", ("loss", "val_loss")),
    Group(
        "temperature",
        "Temperatures",
        ("temperature", "temperature_nominal", "temperature_noise", "temperature_virial"),
    ),
    Group("entropy", "Entropy", ("entropy", "entropy_total", "weight_entropy")),
    Group(
        "entropy_production",
        "Entropy production",
        ("entropy_production", "entropy_production_excess"),
    ),
    Group("heat", "Heat", ("heat",)),
)
GROUP_OF = {name: group for group in GROUPS for name in group.members}


def layout_of(kind: str, category: str) -> PlotLayout:
    """The plot layout `kind` declares; its category's default when the kind is unknown."""
    try:
        return get_kind(kind).plot
    except UnknownKind:
        return default_plot(category)


def unit_of(key: str, *, kind: str, category: str, spec: Mapping[str, Any]) -> str | None:
    """The unit of a panel (a group key or a metric name) for a job of this kind."""
    return layout_of(kind, category).unit(key, spec)


@dataclass
class Panel:
    key: str
    title: str
    names: list[str]


def panels_for(names: Sequence[str]) -> list[Panel]:
    """Group the names into panels: the groups first (in GROUPS order), then the others."""
    present = set(names)
    panels = []
    for group in GROUPS:
        members = [n for n in group.members if n in present]
        if members:
            title = group.title if len(members) > 1 else humanize(members[0])
            panels.append(Panel(group.key, title, members))
    for name in sorted(present - set(GROUP_OF)):
        panels.append(Panel(name, humanize(name), [name]))
    return panels


def humanize(name: str) -> str:
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def default_names(available: Sequence[str]) -> list[str]:
    """What a plot shows unless names are given: every metric but the pure axes."""
    names = [n for n in available if n not in AXES]
    return names or list(available)


def shown(series: Series, names: Sequence[str] | None = None) -> list[str]:
    """The metrics a plot draws: `names` as asked, or by default every metric with at least one
    defined point (one undefined for the job so far, every point null, would be an empty
    panel; the job page lists it apart with the reason)."""
    if names:
        return [n for n in names if n in series]

    def defined(name: str) -> bool:
        return any(v is not None and not math.isnan(float(v)) for v in series[name]["values"])

    return [n for n in default_names(sorted(series)) if defined(n)]


def _thin(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """At most MAX_POINTS_PER_LINE points, keeping each stride's extremes (spikes stay seen)."""
    n = len(xs)
    if n <= MAX_POINTS_PER_LINE:
        return xs, ys
    stride = math.ceil(n / (MAX_POINTS_PER_LINE / 2))
    out_x: list[float] = []
    out_y: list[float] = []
    for start in range(0, n, stride):
        end = start + stride
        chunk = [(y, x) for x, y in zip(xs[start:end], ys[start:end], strict=True)]
        finite = [c for c in chunk if not math.isnan(c[0])]
        if not finite:
            out_x.append(chunk[0][1])
            out_y.append(float("nan"))
            continue
        low, high = min(finite), max(finite)
        for y, x in sorted({low, high}, key=lambda c: c[1]):
            out_x.append(x)
            out_y.append(y)
    return out_x, out_y


def render(
    series: Series,
    *,
    kind: str,
    category: str,
    spec: Mapping[str, Any] | None = None,
    title: str = "",
    names: Sequence[str] | None = None,
    time_series: Mapping[str, Sequence[Any]] | None = None,
) -> bytes:
    """The PNG of `series` (as `service.db.metrics.read_series` returns them).

    When `time_series` (the job's `time` metric) covers every step of a panel, its x axis is time.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spec = spec or {}
    layout = layout_of(kind, category)
    panels = panels_for(shown(series, names))
    times: dict[int, float] = {}
    if time_series:
        times = {
            int(s): float(v)
            for s, v in zip(time_series["steps"], time_series["values"], strict=True)
            if v is not None
        }
    columns = 1 if len(panels) <= 1 else COLUMNS
    rows = max(1, math.ceil(len(panels) / columns))
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows + 0.5), dpi=DPI)
    FigureCanvasAgg(figure)
    if title:
        figure.suptitle(title, fontsize=12)
    if not panels:
        axes = figure.add_subplot(1, 1, 1)
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no metric points yet", ha="center", va="center", fontsize=14)
    for index, panel in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        steps_all = [s for name in panel.names for s in series[name]["steps"]]
        use_time = bool(times) and all(int(s) in times for s in steps_all)
        for name in panel.names:
            steps = [int(s) for s in series[name]["steps"]]
            xs = [times[s] if use_time else float(s) for s in steps]
            ys = [float("nan") if v is None else float(v) for v in series[name]["values"]]
            xs, ys = _thin(xs, ys)
            few = len(xs) <= 30  # markers when there are few points (e.g. one per temperature)
            axes.plot(xs, ys, label=name, linewidth=1.3, marker="o" if few else None, markersize=3)
        unit = layout.unit(panel.key, spec)
        if unit is None and len(panel.names) == 1:
            unit = layout.unit(panel.names[0], spec)
        ylabel = panel.title if len(panel.names) > 1 else panel.names[0]
        axes.set_ylabel(f"{ylabel} [{unit}]" if unit else ylabel, fontsize=9)
        if use_time:
            time_unit = layout.unit("time", spec)
            axes.set_xlabel(f"time [{time_unit}]" if time_unit else "time", fontsize=9)
        else:
            axes.set_xlabel(layout.x_label, fontsize=9)
        axes.set_title(panel.title, fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.tick_params(labelsize=8)
        if len(panel.names) > 1:
            axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
