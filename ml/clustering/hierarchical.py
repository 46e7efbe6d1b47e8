"""Kind `hierarchical`: agglomerative clustering (ward, average, complete or single linkage),
cut into `n_clusters` or at `distance_threshold`; predicts new rows by the linkage's own rule and
draws the dendrogram (the maths in `ml.clustering.agglomerative`). Memory grows with rows², so
data sets are limited to `MAX_ROWS` rows."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ml.clustering import agglomerative
from ml.clustering import shared as clustering
from ml.core.registry import register_kind
from ml.core.reporting import CPU, JobFailed, Reporter, RunContext, RunOutcome
from ml.core.sizing import DATA_COPIES, FLOAT, RUNTIME_BYTES, SizeEstimate
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field, too_many_clusters
from ml.reduction import shared as reduction

MAX_ROWS = 10_000


def too_many_rows(rows: int) -> str | None:
    """Why `rows` is over the limit, or None when it is not."""
    if rows <= MAX_ROWS:
        return None
    need = 8 * rows * (rows - 1) / 2 / 2**30
    limit = 8 * MAX_ROWS * (MAX_ROWS - 1) / 2 / 2**20
    return (
        f"hierarchical clusters at most {MAX_ROWS} rows; the data set has {rows}. The merge tree "
        f"is built from all pairwise distances, n(n − 1)/2 numbers: {limit:.0f} MiB at "
        f"{MAX_ROWS} rows, {need:.1f} GiB (plus a working copy) for {rows}, and time grows as "
        "n² too. Cluster a sample of the rows, or use kmeans"
    )


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
    """Agglomerative clustering (ward, average, complete, single) with its dendrogram."""

    kind: Literal["hierarchical"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: HierarchicalParams
    preprocessing: Preprocessing = preprocessing_field("standard")

    def data_problem(self, rows: int, features: int) -> str | None:
        k = self.params.n_clusters
        return too_many_rows(rows) or (too_many_clusters(k, rows) if k is not None else None)

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        """The model keeps the rows; the merge tree needs their n(n − 1)/2 distances, twice."""
        estimate, features = SizeEstimate(), math.prod(row_shape)
        estimate.add_parameters("dataset", rows * features)
        estimate.add_memory("runtime", RUNTIME_BYTES)
        estimate.add_memory("dataset", rows * features * FLOAT * DATA_COPIES)
        estimate.add_memory("dataset", 2 * 8 * rows * (rows - 1) // 2)
        return estimate


HierarchicalSpec.example = {
    "kind": "hierarchical",
    "name": "digits-ward",
    "dataset": "builtin:digits",
    "params": {"n_clusters": 10, "linkage": "ward"},
    "preprocessing": {"scale": "standard"},
}

SERVES = frozenset({"predict"})


@register_kind(
    spec=HierarchicalSpec,
    serves=SERVES,
    pictures=frozenset({"dendrogram"}),
    servable="ml.clustering.agglomerative:HierarchicalServable",
)
def run(spec: HierarchicalSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    p = spec.params
    rows = reduction.load_rows(context, "hierarchical")
    reason = too_many_rows(rows.rows)
    if reason is not None:
        raise JobFailed("invalid_data", reason)
    if rows.rows < 2:
        raise JobFailed("invalid_data", f"hierarchical needs at least 2 rows; got {rows.rows}")
    scaler = reduction.fit_scaler(spec, rows.raw)
    x = reduction.flat(scaler, rows.raw, np.float64)
    if p.n_clusters is not None:
        clustering.check_cluster_count(x, p.n_clusters)
    reporter.progress(0.05, rows=rows.rows)
    tree, distances = agglomerative.build(x, p.linkage)
    heights = tree[:, 2]
    reporter.progress(0.7, rows=rows.rows)
    agglomerative.record_merges(tree, reporter)
    if p.n_clusters is not None:
        k, height = p.n_clusters, agglomerative.cut_height(heights, p.n_clusters)
    else:
        threshold = p.distance_threshold
        assert threshold is not None  # the params hold exactly one of the two
        k, height = agglomerative.clusters_at(heights, threshold), float(threshold)
    labels = agglomerative.cut(tree, k)
    correlation = agglomerative.cophenetic_correlation(tree, distances)
    del distances
    scores = clustering.scores(rows.labels, labels)
    assigner = agglomerative.Assigner.of(x, labels, p.linkage)
    path = agglomerative.save(context.workdir / "model", assigner, tree, labels, height, k)
    evaluation = {
        **scores,
        "n_clusters": k,
        "linkage": p.linkage,
        "cut_height": height,
        "cophenetic_correlation": correlation,
    }
    model = clustering.model_outcome(
        {"hierarchical": path},
        rows.feature_shape,
        scaler,
        SERVES,
        evaluation=evaluation,
        pictures=["dendrogram"],
    )
    result = {
        **evaluation,
        "cluster_sizes": clustering.sizes(labels, k),
        "rows": rows.rows,
        "top_merge_height": float(heights[-1]),
        "distance": "euclidean, scaled",
    }
    reporter.progress(1.0, n_clusters=k)
    return RunOutcome(result=result, device=CPU, model=model)
