"""Kind `hierarchical`: agglomerative clustering (ward, average, complete or single linkage),
cut into `n_clusters` or at `distance_threshold`; predicts new rows by the linkage's own rule and
draws the dendrogram. Memory grows with rows², so data sets are limited to
`ml.hierarchical.MAX_ROWS` rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ml import hierarchical
from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.serving import Servable
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field, too_many_clusters


class HierarchicalParams(StrictModel):
    n_clusters: int | None = Field(
        None, ge=1, le=10_000, description="Cut the tree into this many clusters."
    )
    linkage: Literal["ward", "average", "complete", "single"] = Field(
        "ward",
        description="Distance between clusters: `ward` — increase in within-cluster variance; "
        "`average` — mean, `complete` — largest, `single` — smallest distance between members.",
    )
    distance_threshold: float | None = Field(
        None,
        gt=0,
        description="Or cut the tree here: merges at or above this height are not made "
        "(Euclidean distance in the scaled space; for ward, scikit-learn's ward distance).",
    )

    @model_validator(mode="after")
    def _check(self) -> HierarchicalParams:
        if (self.n_clusters is None) == (self.distance_threshold is None):
            raise ValueError("give exactly one of n_clusters and distance_threshold")
        return self


class HierarchicalSpec(JobSpec):
    kind: Literal["hierarchical"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: HierarchicalParams
    preprocessing: Preprocessing = preprocessing_field("standard")

    def data_problem(self, rows: int, features: int) -> str | None:
        k = self.params.n_clusters
        return hierarchical.too_many_rows(rows) or (
            too_many_clusters(k, rows) if k is not None else None
        )


HierarchicalSpec.example = {
    "kind": "hierarchical",
    "name": "digits-ward",
    "dataset": "builtin:digits",
    "params": {"n_clusters": 10, "linkage": "ward"},
    "preprocessing": {"scale": "standard"},
}

SERVES = frozenset({"predict"})


def load(files: dict[str, Path], meta: dict[str, Any]) -> Servable:
    return hierarchical.HierarchicalServable(files, meta)


@register_kind(
    name="hierarchical",
    spec=HierarchicalSpec,
    summary="Agglomerative clustering (ward, average, complete, single) with its dendrogram.",
    category="model",
    serves=SERVES,
    pictures=frozenset({"dendrogram"}),
    load=load,
)
def run(spec: HierarchicalSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    return hierarchical.train_hierarchical(spec, reporter, context)
