"""Kind `dec`: deep embedded clustering (Xie, Girshick & Farhadi 2016). An autoencoder is
pre-trained, k-means runs in its latent space, then the encoder and the cluster centres are
refined together on KL(P‖Q) through the shared trainer (with its thermodynamic telemetry)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ml.anomaly.autoencoder import Activation
from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field, too_many_clusters
from ml.core.training_config import TrainingConfig


class DeepClusteringParams(StrictModel):
    """What DEC and DCN share: an autoencoder pre-trained, then clustered in its latent space."""

    n_clusters: int = Field(10, ge=1, le=1000, description="k; at most the number of rows.")
    latent_dim: int = Field(10, ge=1, le=4096, description="Size of the embedding z.")
    hidden: list[int] = Field(
        default_factory=lambda: [256, 64],
        max_length=8,
        description="Encoder layer sizes (the decoder mirrors them).",
    )
    activation: Activation = "relu"
    pretrain_epochs: int = Field(
        50, ge=0, le=100_000, description="Autoencoder epochs before clustering (0: none)."
    )
    update_interval: int = Field(
        1,
        ge=1,
        le=1000,
        description="Epochs between two cluster updates (DEC: of the target distribution P; "
        "DCN: of assignments and centroids).",
    )
    tol: float = Field(
        0.001,
        ge=0,
        le=1,
        description="Stop when fewer than this fraction of rows change cluster between two "
        "updates.",
    )
    n_init: int = Field(10, ge=1, le=1000, description="k-means restarts in the latent space.")

    @model_validator(mode="after")
    def _check(self) -> DeepClusteringParams:
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden layer sizes must be positive")
        return self


class DecParams(DeepClusteringParams):
    alpha: float = Field(
        1.0, gt=0, le=1000, description="Degrees of freedom of the Student-t soft assignment."
    )


class DeepClusteringSpec(JobSpec):
    """What dec and dcn share: a data set, every row of which is clustered."""

    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: DeepClusteringParams
    preprocessing: Preprocessing = preprocessing_field("standard")

    def data_problem(self, rows: int, features: int) -> str | None:
        return too_many_clusters(self.params.n_clusters, rows)


class DecSpec(DeepClusteringSpec):
    kind: Literal["dec"]
    params: DecParams = Field(default_factory=DecParams)
    training: TrainingConfig = Field(
        default_factory=TrainingConfig,
        description="Both phases; `epochs` is the refinement's (pre-training runs "
        "`params.pretrain_epochs`). Every row is clustered: `validation_split` is not used.",
    )


DecSpec.example = {
    "kind": "dec",
    "name": "digits-dec",
    "dataset": "builtin:digits",
    "params": {
        "n_clusters": 10,
        "latent_dim": 10,
        "hidden": [128, 64],
        "pretrain_epochs": 15,
        "alpha": 1.0,
    },
    "preprocessing": {"scale": "minmax"},
    "training": {"epochs": 10, "batch_size": 128, "seed": 0},
}

SERVES = frozenset({"encode", "predict"})


@register_kind(
    name="dec",
    spec=DecSpec,
    summary="Deep embedded clustering: encodes rows and predicts soft cluster assignments.",
    category="model",
    serves=SERVES,
    servable="ml.deep_clustering:DecServable",
)
def run(spec: DecSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.deep_clustering import train_dec

    return train_dec(spec, reporter, context)
