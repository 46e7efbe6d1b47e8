"""Kind `tsne`: parametric t-SNE (van der Maaten 2009). A dense network is trained through the
shared trainer (with its telemetry) so that its embedding keeps t-SNE's neighbourhoods; it encodes
new rows, records trustworthiness next to scikit-learn's TSNE, and draws the training embedding.
The loss, the network and the serving are in `ml.reduction.tsne_tf`."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ml.anomaly.autoencoder import Activation
from ml.clustering.shared import model_outcome
from ml.core.registry import register_kind
from ml.core.reporting import JobFailed, Reporter, RunContext, RunOutcome
from ml.core.sizing import FLOAT, MAX_UNITS, SizeEstimate, Width, chain, dense, trained
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field
from ml.core.splits import split_indices
from ml.core.training_config import OptimizerConfig, TrainingConfig
from ml.reduction import shared as reduction


class TsneParams(StrictModel):
    n_components: Literal[2, 3] = Field(2, description="Dimension of the embedding.")
    perplexity: float = Field(
        30.0,
        ge=1,
        le=10_000,
        description="Effective number of neighbours kept per row; below the number of "
        "training rows (capped at a batch's rows − 1 within a batch).",
    )
    early_exaggeration: float = Field(
        12.0, ge=1, le=1000, description="α multiplying P during the first epochs."
    )
    exaggeration_epochs: int = Field(
        10, ge=0, le=100_000, description="Epochs trained on KL(αP‖Q) before α returns to 1."
    )
    hidden: list[Width] = Field(
        default_factory=lambda: [256, 256],
        max_length=8,
        description=f"Network layer sizes, each at most {MAX_UNITS}.",
    )
    activation: Activation = "relu"
    evaluation_rows: int = Field(
        1000,
        ge=11,
        le=20_000,
        description="Training rows (a random sample) on which trustworthiness is measured and "
        "scikit-learn's TSNE is run; its cost grows as rows².",
    )
    compare_sklearn: bool = Field(
        True, description="Run scikit-learn's TSNE on those rows (`sklearn_trustworthiness`)."
    )

    @model_validator(mode="after")
    def _check(self) -> TsneParams:
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden layer sizes must be positive")
        return self


class TsneTraining(TrainingConfig):
    """The usual `training` section; t-SNE's defaults: larger batches (P and Q are normalised
    over a batch, so a larger batch keeps more of each neighbourhood), more epochs, lr 0.003."""

    epochs: int = Field(100, ge=1, le=100_000)
    batch_size: int = Field(512, ge=2, le=65_536)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig.model_validate({"learning_rate": 0.003})
    )


class TsneSpec(JobSpec):
    """Parametric t-SNE: a network that embeds new rows, with its embedding picture."""

    kind: Literal["tsne"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: TsneParams = Field(default_factory=TsneParams)
    training: TsneTraining = Field(default_factory=TsneTraining)
    preprocessing: Preprocessing = preprocessing_field("standard")

    @model_validator(mode="after")
    def _check(self) -> TsneSpec:
        p = self.params
        if p.early_exaggeration > 1 and p.exaggeration_epochs >= self.training.epochs:
            raise ValueError(
                f"exaggeration_epochs ({p.exaggeration_epochs}) must be below training.epochs "
                f"({self.training.epochs}): the last epochs fit the plain KL(P‖Q)"
            )
        return self

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        return tsne_size(self, rows, row_shape)


# Batch × batch matrices alive in a step: distances, P (and its search), Q, ln Q and gradients.
PAIRWISE_MATRICES = 8
# Rows × rows float64 matrices of scikit-learn's trustworthiness: the distances and their ranks.
TRUST_MATRICES = 3


def tsne_size(spec: TsneSpec, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
    """The network's weights, the batch's pairwise matrices and the evaluation's."""
    p, estimate = spec.params, SizeEstimate()
    features = math.prod(row_shape)
    body, last = chain(features, p.hidden)
    estimate.add_parameters("params.hidden", body + dense(last, p.n_components))
    batch = min(spec.training.batch_size, rows)
    trained(estimate, rows=rows, features=features, batch_size=batch, widths=p.hidden)
    estimate.add_memory("training.batch_size", PAIRWISE_MATRICES * batch * batch * FLOAT)
    sample = min(p.evaluation_rows, rows)
    estimate.add_memory("params.evaluation_rows", TRUST_MATRICES * sample * sample * 8)
    if p.compare_sklearn:  # its neighbour graph: 3 × perplexity neighbours a row
        neighbours = min(sample, 3 * int(p.perplexity) + 1)
        estimate.add_memory("params.perplexity", TRUST_MATRICES * sample * neighbours * 8)
    return estimate


TsneSpec.example = {
    "kind": "tsne",
    "name": "digits-tsne",
    "dataset": "builtin:digits",
    "params": {
        "n_components": 2,
        "perplexity": 30,
        "early_exaggeration": 12,
        "exaggeration_epochs": 5,
        "hidden": [256, 256],
        "evaluation_rows": 500,
    },
    "preprocessing": {"scale": "standard"},
    "training": {"epochs": 25, "batch_size": 512, "seed": 0},
}

SERVES = frozenset({"encode"})
TRUSTWORTHINESS_NEIGHBOURS = 5


@register_kind(
    spec=TsneSpec,
    serves=SERVES,
    pictures=frozenset({"embedding"}),
    servable="ml.reduction.tsne_tf:TsneServable",
)
def run(spec: TsneSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.core.training import Trainer, configure_determinism, device_name
    from ml.reduction.tsne_tf import EarlyExaggeration, TsneObjective, save_model

    p, training = spec.params, spec.training
    configure_determinism(training)
    rows = reduction.load_rows(context, "tsne")
    try:
        parts = split_indices(rows.rows, training.validation_split, 0.0, training.seed)
    except ValueError as exc:
        raise JobFailed("invalid_data", str(exc)) from exc
    check_perplexity(p.perplexity, len(parts.train))
    scaler = reduction.fit_scaler(spec, rows.raw[parts.train])
    x = reduction.flat(scaler, rows.raw[parts.train])
    x_val = reduction.flat(scaler, rows.raw[parts.validation])
    objective = TsneObjective(p, x.shape[1])
    trainer = Trainer(objective, training, reporter)
    resumed = trainer.restore_checkpoint(context.checkpoint_dir, objective.load_weights)

    exaggeration = EarlyExaggeration(objective, p)
    exaggeration.set(trainer.start_epoch)
    fit = trainer.fit(
        x,
        x_val if len(x_val) >= 2 else None,
        checkpoint_dir=context.checkpoint_dir,
        save_weights=objective.save_weights,
        callbacks=[exaggeration],
    )
    embedded = objective.embedding(x)
    if not np.isfinite(embedded).all():
        raise JobFailed("diverged", "the embedding holds NaN or infinite values")
    sample = reduction.subsample(len(x), p.evaluation_rows, training.seed)
    evaluation: dict[str, Any] = {
        "kl_divergence": fit.final_loss,
        "trustworthiness": trustworthiness(x[sample], embedded[sample]),
        "trustworthiness_rows": len(sample),
        "trustworthiness_neighbours": TRUSTWORTHINESS_NEIGHBOURS,
    }
    if len(x_val):
        held = reduction.subsample(len(x_val), p.evaluation_rows, training.seed)
        evaluation["trustworthiness_held_out"] = trustworthiness(
            x_val[held], objective.embedding(x_val[held])
        )
    if p.compare_sklearn and len(sample) > 2 * TRUSTWORTHINESS_NEIGHBOURS:
        evaluation.update(sklearn_reference(x[sample], p, training.seed))
    reporter.progress(1.0, epochs=fit.epochs_run)
    folder = context.workdir / "model"
    files = save_model(objective, embedded, rows, parts.train, folder, training.seed)
    model = model_outcome(
        files, rows.feature_shape, scaler, SERVES, evaluation=evaluation, pictures=["embedding"]
    )
    result = {
        **evaluation,
        **fit.summary(resumed=resumed),
        "energy_units": "training loss: KL(αP‖Q) of a batch, in nats",
    }
    return RunOutcome(result=result, device=device_name(), model=model)


def check_perplexity(perplexity: float, rows: int) -> None:
    if perplexity >= rows:
        raise JobFailed(
            "invalid_data",
            f"perplexity = {perplexity:g} is not below the {rows} rows t-SNE trains on: it is the "
            "effective number of neighbours each row keeps, and a row has only "
            f"{rows - 1} others. Use a perplexity below {rows} (5 to 50 is usual)",
        )


def trustworthiness(x: np.ndarray, y: np.ndarray) -> float | None:
    """scikit-learn's trustworthiness with 5 neighbours (None for fewer than 11 rows)."""
    from sklearn.manifold import trustworthiness as score

    if len(x) <= 2 * TRUSTWORTHINESS_NEIGHBOURS:
        return None
    return float(score(x, y, n_neighbors=TRUSTWORTHINESS_NEIGHBOURS))


def sklearn_reference(x: np.ndarray, params: Any, seed: int) -> dict[str, float | None]:
    """scikit-learn's (non-parametric) TSNE on the same rows, with the same perplexity,
    dimension and early exaggeration; single-threaded (threads cost more than they save on a
    busy machine at these sizes)."""
    import time

    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    with threadpool_limits(limits=1):
        reference = TSNE(
            n_components=params.n_components,
            perplexity=min(params.perplexity, len(x) - 1),
            early_exaggeration=params.early_exaggeration,
            random_state=seed,
        )
        embedded = reference.fit_transform(x.astype(np.float64))
    return {
        "sklearn_trustworthiness": trustworthiness(x, embedded),
        "sklearn_kl_divergence": float(reference.kl_divergence_),
        "sklearn_seconds": time.perf_counter() - started,
    }
