"""Kind `annealing`: deterministic annealing clustering (Rose 1998), mass-constrained. Its metric
history is a cooling curve (distortion, entropy, mutual information, free energy, heat capacity per
temperature); the model records where clusters split next to the predicted critical temperatures,
and predicts clusters and Gibbs probabilities at the final temperature."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ml.clustering import shared as clustering
from ml.core.registry import register_kind
from ml.core.reporting import CPU, JobFailed, Reporter, RunContext, RunOutcome
from ml.core.sizing import SizeEstimate, clustered
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field, too_many_clusters

if TYPE_CHECKING:
    from ml.clustering.deterministic_annealing import Annealed, State


class AnnealingParams(StrictModel):
    max_clusters: int = Field(
        8, ge=1, le=1000, description="Code vectors are duplicated only while there are fewer."
    )
    t_min: float | None = Field(
        None,
        gt=0,
        description="Stop cooling below this temperature (squared distance in the scaled "
        "space); default 1e-3 × the first critical temperature 2 λ_max(Cov X).",
    )
    cooling_rate: float = Field(0.9, gt=0, lt=1, description="T ← cooling_rate · T per step.")
    t_start: float | None = Field(
        None,
        gt=0,
        description="First temperature; default 1.05 × the first critical temperature, just "
        "above it.",
    )
    perturbation: float = Field(
        0.01,
        gt=0,
        le=1,
        description="Displacement of a duplicated code vector, as a fraction of the data's "
        "spread (root mean feature variance); copies closer than it are merged.",
    )
    max_iter: int = Field(300, ge=1, le=100_000, description="Fixed-point iterations per T.")
    seed: int = Field(0, ge=0, lt=2**31, description="Directions of the perturbations.")

    @model_validator(mode="after")
    def _check(self) -> AnnealingParams:
        if self.t_start is not None and self.t_min is not None and self.t_min > self.t_start:
            raise ValueError(f"t_min ({self.t_min}) is above t_start ({self.t_start})")
        steps = 0.0
        if self.t_start is not None and self.t_min is not None:
            steps = math.log(self.t_min / self.t_start) / math.log(self.cooling_rate)
        if steps > 10_000:
            raise ValueError(
                f"cooling from t_start to t_min at cooling_rate {self.cooling_rate} takes "
                f"{steps:.0f} temperatures; at most 10000"
            )
        return self


class AnnealingSpec(JobSpec):
    """Deterministic annealing clustering: phase transitions of a cooling codebook."""

    kind: Literal["annealing"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: AnnealingParams = Field(default_factory=AnnealingParams)
    preprocessing: Preprocessing = preprocessing_field("standard")

    def data_problem(self, rows: int, features: int) -> str | None:
        return too_many_clusters(self.params.max_clusters, rows, "max_clusters")

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        # rows × K float64: distances, the Gibbs posterior, its logarithm and a temporary
        k, features = self.params.max_clusters, math.prod(row_shape)
        return clustered(
            rows=rows, features=features, k=k, name="params.max_clusters", item=8, work_copies=4
        )


AnnealingSpec.example = {
    "kind": "annealing",
    "name": "eight-gaussians-annealing",
    "dataset": "builtin:eight_gaussians",
    "params": {"max_clusters": 8, "cooling_rate": 0.9, "perturbation": 0.01, "seed": 0},
    "preprocessing": {"scale": "standard"},
}


class CoolingCurve:
    """Records each temperature's state as metric points (with the heat capacity since the
    previous one) and the progress, as the fraction of ln(t_start / t_min) cooled so far."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.previous: State | None = None

    def __call__(self, step: int, state: State, sofar: Annealed) -> None:
        from ml.clustering import deterministic_annealing as annealing

        values = {
            "temperature": state.temperature,
            "distortion": state.distortion,
            "entropy": state.entropy,
            "mutual_information": state.mutual_information,
            "free_energy": state.free_energy,
            "n_clusters": state.n_clusters,
            "iterations": state.iterations,
        }
        if self.previous is not None:
            values["heat_capacity"] = annealing.heat_capacity(self.previous, state)
        self.previous = state
        self.reporter.metrics(step, values)
        cooled = math.log(sofar.t_start / state.temperature)
        total = math.log(sofar.t_start / sofar.t_min)
        fraction = min(1.0, cooled / total) if total > 0 else 1.0
        self.reporter.progress(fraction, temperature=state.temperature, n_clusters=state.n_clusters)


@register_kind(spec=AnnealingSpec, **clustering.CENTROIDS)
def run(spec: AnnealingSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    import numpy as np

    from ml.clustering import deterministic_annealing as annealing

    p = spec.params
    data = clustering.prepare(spec, context, p.max_clusters, "max_clusters")
    try:
        result = annealing.anneal(
            data.x,
            max_clusters=p.max_clusters,
            cooling_rate=p.cooling_rate,
            t_start=p.t_start,
            t_min=p.t_min,
            perturbation=p.perturbation,
            max_iter=p.max_iter,
            seed=p.seed,
            on_state=CoolingCurve(reporter),
        )
    except ValueError as exc:  # a schedule too long for the data's own temperature scale
        raise JobFailed("invalid_data", str(exc)) from exc
    book = result.codebook
    clusters = annealing.assignments(data.x, book, result.temperature).argmax(axis=1)
    scores = clustering.scores(data.labels, clusters)
    path = clustering.save_centroids(
        context.workdir / "model",
        book.y,
        log_weights=np.log(book.p).astype(np.float32),
        temperature=np.float64(result.temperature),
    )
    final = result.states[-1]
    transitions = [t.as_dict() for t in result.transitions]
    evaluation = {
        **scores,
        "phase_transitions": transitions,
        "final_temperature": result.temperature,
        "first_critical_temperature": result.first_critical_temperature,
        "distortion": final.distortion,
    }
    model = data.model(
        {"centroids": path},
        clustering.CENTROID_SERVES,
        calibration={"temperature": result.temperature},
        evaluation=evaluation,
    )
    outcome = {
        **annealing.summary(result),
        **scores,
        "phase_transitions": transitions,
        "free_energy": final.free_energy,
        "distortion": final.distortion,
        "mutual_information": final.mutual_information,
        "cluster_sizes": clustering.sizes(clusters, book.k),
        "rows": data.rows,
        "energy_units": "squared euclidean distance in the scaled space",
    }
    return RunOutcome(result=outcome, device=CPU, model=model)
