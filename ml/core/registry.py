"""The registry of job kinds: one module per kind in its family's package, registered by name.

Routes, tasks and loaders ask the registry what a kind is, accepts and serves; nothing else
branches on a kind's name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, get_args

from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.serving import Servable
from ml.core.spec import JobSpec


class UnknownKind(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown kind {name!r}; known kinds: {', '.join(known)}")
        self.name = name
        self.known = known


class LoadFn(Protocol):
    def __call__(self, files: dict[str, Path], meta: dict[str, Any]) -> Servable: ...


class RunFn(Protocol):
    def __call__(self, spec: Any, reporter: Reporter, context: RunContext) -> RunOutcome: ...


@dataclass(frozen=True)
class PlotLayout:
    """How a job's metric plot is labelled: the x axis when it is not time, and the units of its
    panels by group key or metric name. `spec_units` gives the units that depend on the job's
    spec (as submitted, e.g. a temperature unit among its params); they take precedence."""

    x_label: str
    units: Mapping[str, str] = field(default_factory=dict)
    spec_units: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None

    def unit(self, key: str, spec: Mapping[str, Any]) -> str | None:
        """The unit of panel or metric `key` for a job with this spec, if it has one."""
        if self.spec_units is not None and key in (from_spec := self.spec_units(spec)):
            return from_spec[key]
        return self.units.get(key)


# The layouts of kinds that declare none, by category.
DEFAULT_PLOTS = {
    # k_B = 1: energies, work and temperatures in the same units
    "simulation": PlotLayout(
        "integration step",
        {
            "energy": "energy units (k_B = 1)",
            "work": "energy units (k_B = 1)",
            "heat": "energy per walker",
            "entropy_production": "nats / time",
            "position_variance": "length²",
            "temperature": "energy units (k_B = 1)",
        },
    ),
    # Trained kinds: everything in the units of the loss being optimised (THERMODYNAMICS.md).
    "model": PlotLayout(
        "training step",
        {
            "energy": "loss units",
            "loss": "loss units",
            "temperature": "loss units",
            "entropy": "nats",
            "entropy_production": "nats / step",
            "heat": "loss units",
            "lr": "learning rate",
            "bits_per_dim": "bits / dim",
        },
    ),
}


def default_plot(category: str) -> PlotLayout:
    """The plot layout of a kind of this category that declares none."""
    return DEFAULT_PLOTS.get(category, DEFAULT_PLOTS["model"])


@dataclass(frozen=True)
class Kind:
    """A registered job kind.

    `spec` is the pydantic model of the whole job spec (with `kind: Literal[name]`); `run` is
    called in the worker's child process and may import TensorFlow there, never at module level.
    """

    name: str
    spec: type[JobSpec]
    run: RunFn
    summary: str
    category: str  # "simulation" | "model"
    serves: frozenset[str] = field(default_factory=frozenset)
    pictures: frozenset[str] = field(default_factory=frozenset)
    load: LoadFn | None = None
    plot: PlotLayout = DEFAULT_PLOTS["model"]


_KINDS: dict[str, Kind] = {}
_discovered = False


def register_kind(
    *,
    spec: type[JobSpec],
    summary: str | None = None,
    name: str | None = None,
    category: str | None = None,
    serves: frozenset[str] = frozenset(),
    pictures: frozenset[str] = frozenset(),
    load: LoadFn | None = None,
    servable: str | None = None,
    plot: PlotLayout | None = None,
    run: str | None = None,
) -> Callable[[RunFn], RunFn]:
    """Register the kind `name`: decorate its `run` function, or name it as `run`, the
    `"module:function"` imported when a job runs (so a kind's module stays light).

    Kinds that train a model pass `serves` (operation names) and either `servable`, the
    `"module:Class"` of its :class:`ml.core.serving.Servable` (built from the files and the models
    row's metadata, imported on first load), or a `load` function doing the same. `plot` says
    how its metric plot is labelled (default: its category's layout). The name defaults to the
    spec's `kind` literal, the summary to the spec's own docstring (which the OpenAPI document
    shows as the spec's description), the category to "model" for a kind that serves operations,
    else "simulation".
    """
    name = _spec_kind(spec, name)
    summary = summary or " ".join((spec.__dict__.get("__doc__") or "").split())
    if not summary:
        raise ValueError(f"kind {name!r}: give `summary` or a docstring to {spec.__name__}")
    category = category or ("model" if serves else "simulation")
    if servable is not None:
        if load is not None:
            raise ValueError(f"kind {name!r}: give `servable` or `load`, not both")
        load = _lazy_loader(servable)

    def decorate(fn: RunFn) -> RunFn:
        if name in _KINDS and _KINDS[name].run is not fn and not _same_path(_KINDS[name].run, fn):
            raise ValueError(f"kind {name!r} is registered twice")
        layout = plot or default_plot(category)
        _KINDS[name] = Kind(name, spec, fn, summary, category, serves, pictures, load, layout)
        return fn

    if run is not None:
        decorate(_lazy_run(run))
    return decorate


def _spec_kind(spec: type[JobSpec], name: str | None) -> str:
    """The kind named by `spec`'s `kind: Literal[...]` field, which `name`, if given, must match."""
    literal = get_args(spec.model_fields["kind"].annotation)
    if name is None and len(literal) != 1:
        raise ValueError(f"{spec.__name__}.kind is not one literal: pass `name`")
    if name is not None and literal and name not in literal:
        raise ValueError(f"kind {name!r} registered with {spec.__name__}, whose kind is {literal}")
    return name if name is not None else str(literal[0])


def _lazy_run(path: str) -> RunFn:
    """A `run` that imports `module:function` when a job runs (in the job's process)."""
    module_name, _, function_name = path.partition(":")

    def run(spec: Any, reporter: Reporter, context: RunContext) -> RunOutcome:
        function = getattr(importlib.import_module(module_name), function_name)
        return function(spec, reporter, context)  # type: ignore[no-any-return]

    run.path = path  # type: ignore[attr-defined]
    return run


def _same_path(a: RunFn, b: RunFn) -> bool:
    """Two lazy runs of one `module:function` (a module imported again registers again)."""
    path = getattr(a, "path", None)
    return path is not None and path == getattr(b, "path", None)


def _lazy_loader(path: str) -> LoadFn:
    """A `load` that imports `module:Class` when first called: serving modules import
    TensorFlow at module level, which the API must not do at start-up."""
    module_name, _, class_name = path.partition(":")

    def load(files: dict[str, Path], meta: dict[str, Any]) -> Servable:
        servable_class = getattr(importlib.import_module(module_name), class_name)
        return servable_class(files, meta)  # type: ignore[no-any-return]

    return load


# The packages that hold kinds. Each lists, in `KIND_MODULES`, its modules that register a kind;
# only those are imported to discover the kinds (the others may import TensorFlow at module level).
FAMILIES = (
    "ml.simulation",
    "ml.clustering",
    "ml.generative",
    "ml.reduction",
    "ml.anomaly",
)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for family in FAMILIES:
        package = importlib.import_module(family)
        for module in package.KIND_MODULES:
            importlib.import_module(f"{family}.{module}")
    _discovered = True


def list_kinds() -> list[str]:
    _discover()
    return sorted(_KINDS)


def get_kind(name: str) -> Kind:
    """The kind registered as `name`; raises :class:`UnknownKind` naming the known ones."""
    _discover()
    try:
        return _KINDS[name]
    except KeyError:
        raise UnknownKind(name, sorted(_KINDS)) from None
