"""Kind `kmeans`: k-means++ seeding, `n_init` restarts of Lloyd's iterations in TensorFlow; the
model is the best restart's centroids, and it predicts clusters and squared distances."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from ml.clustering import shared as clustering
from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.sizing import FLOAT, SizeEstimate, clustered
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field, too_many_clusters


class KMeansParams(StrictModel):
    n_clusters: int = Field(8, ge=1, le=10_000, description="k; at most the number of rows.")
    n_init: int = Field(10, ge=1, le=1000, description="Restarts; the lowest inertia wins.")
    max_iter: int = Field(300, ge=1, le=100_000, description="Lloyd iterations per restart.")
    tol: float = Field(
        1e-4,
        ge=0,
        description="Stop when the centroids move less than tol × the mean feature variance "
        "(squared, summed over centroids), or when no assignment changes.",
    )
    seed: int = Field(0, ge=0, lt=2**31, description="Same seed, same centroids.")


class KMeansSpec(JobSpec):
    """k-means clustering (k-means++, restarts); predicts clusters and distances."""

    kind: Literal["kmeans"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: KMeansParams = Field(default_factory=KMeansParams)
    preprocessing: Preprocessing = preprocessing_field("standard")

    def data_problem(self, rows: int, features: int) -> str | None:
        return too_many_clusters(self.params.n_clusters, rows)

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        # rows × k: the distances, their argmin's one-hot and k-means++'s candidates
        k, features = self.params.n_clusters, math.prod(row_shape)
        return clustered(
            rows=rows, features=features, k=k, name="params.n_clusters", item=FLOAT, work_copies=3
        )


KMeansSpec.example = {
    "kind": "kmeans",
    "name": "eight-gaussians-kmeans",
    "dataset": "builtin:eight_gaussians",
    "params": {"n_clusters": 8, "n_init": 10, "max_iter": 300, "tol": 1e-4, "seed": 0},
    "preprocessing": {"scale": "standard"},
}


@register_kind(spec=KMeansSpec, **clustering.CENTROIDS)
def run(spec: KMeansSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.clustering.kmeans_tf import KMeans, KMeansRun
    from ml.core.training import device_name

    p = spec.params
    data = clustering.prepare(spec, context, p.n_clusters)
    steps = 0

    def record(run: KMeansRun) -> None:
        # Steps run on across restarts: restart r's iterations follow restart r − 1's.
        nonlocal steps
        for value in run.history:
            steps += 1
            reporter.metrics(steps, {"inertia": value, "restart": run.restart})
        reporter.metrics(steps, {"restart_inertia": run.inertia})
        reporter.progress((run.restart + 1) / p.n_init, restart=run.restart + 1, step=steps)

    kmeans = KMeans(p.n_clusters, data.x.shape[1], max_iter=p.max_iter)
    best = kmeans.fit(data.x, n_init=p.n_init, tol=p.tol, seed=p.seed, on_restart=record)
    scores = clustering.scores(data.labels, best.labels)
    path = clustering.save_centroids(context.workdir / "model", best.centroids)
    summary = {
        "inertia": best.inertia,
        "n_iter": best.n_iter,
        "converged": best.converged,
        "best_restart": best.restart,
        "cluster_sizes": clustering.sizes(best.labels, p.n_clusters),
    }
    evaluation = {**scores, "inertia": best.inertia}
    model = data.model({"centroids": path}, clustering.CENTROID_SERVES, evaluation=evaluation)
    result = {**summary, **scores, "rows": data.rows, "distance": "squared euclidean, scaled"}
    return RunOutcome(result=result, device=device_name(), model=model)
