"""The registry: kinds found in their family packages; runs and servables named lazily."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import pytest

from ml.core import registry
from ml.core.reporting import RunOutcome
from ml.core.spec import JobSpec


class LazySpec(JobSpec):
    kind: Literal["lazy"]


def lazy_run(spec: Any, reporter: Any, context: Any) -> RunOutcome:
    return RunOutcome(result={"kind": spec.kind, "reporter": reporter})


@pytest.fixture
def unregister() -> Iterator[None]:
    yield
    registry._KINDS.pop("lazy", None)


FAMILIES = {
    "ml.simulation": {"cooling", "langevin", "ising", "jarzynski"},
    "ml.clustering": {"kmeans", "annealing", "hierarchical", "dec", "dcn"},
    "ml.generative": {"gan", "diffusion"},
    "ml.reduction": {"pca", "tsne"},
    "ml.anomaly": {"autoencoder", "vae"},
}


def test_every_family_registers_its_kinds() -> None:
    known = set(registry.list_kinds())
    for family, kinds in FAMILIES.items():
        assert kinds <= known, family
        for name in kinds:
            assert registry.get_kind(name).spec.__module__.startswith(family + "."), name


def test_a_run_named_as_module_and_function_is_imported_when_it_runs(unregister: None) -> None:
    path = f"{__name__}:lazy_run"
    registry.register_kind(name="lazy", spec=LazySpec, summary="t", category="model", run=path)
    kind = registry.get_kind("lazy")
    outcome = kind.run(LazySpec(kind="lazy"), "the reporter", None)
    assert outcome.result == {"kind": "lazy", "reporter": "the reporter"}
    # A module imported again registers again: the same path is no conflict, another one is.
    registry.register_kind(name="lazy", spec=LazySpec, summary="t", category="model", run=path)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_kind(
            name="lazy", spec=LazySpec, summary="t", category="model", run="json:dumps"
        )


def test_an_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(registry.UnknownKind, match="known kinds: annealing, autoencoder"):
        registry.get_kind("nope")


def test_a_kind_names_its_servable_one_way(unregister: None) -> None:
    with pytest.raises(ValueError, match="not both"):
        registry.register_kind(
            name="lazy",
            spec=LazySpec,
            summary="t",
            category="model",
            servable="json:JSONDecoder",
            load=lambda files, meta: None,  # type: ignore[arg-type,return-value]
        )
    assert "lazy" not in registry._KINDS


def test_a_kind_is_named_by_its_spec_and_its_category_follows_what_it_serves(
    unregister: None,
) -> None:
    registry.register_kind(spec=LazySpec, summary="t", run=f"{__name__}:lazy_run")
    kind = registry.get_kind("lazy")
    assert (kind.name, kind.category) == ("lazy", "simulation")
    registry._KINDS.pop("lazy")
    registry.register_kind(spec=LazySpec, summary="t", serves=frozenset({"encode"}), run="a:b")
    assert registry.get_kind("lazy").category == "model"
    with pytest.raises(ValueError, match="whose kind is"):
        registry.register_kind(name="other", spec=LazySpec, summary="t", run="a:b")
    assert "other" not in registry._KINDS


def test_every_example_is_a_valid_spec_of_its_kind() -> None:
    """Examples written from the params' defaults (`full_example`) still validate, and name
    their own kind."""
    for name in registry.list_kinds():
        spec = registry.get_kind(name).spec
        assert spec.model_validate(spec.example).kind == name
