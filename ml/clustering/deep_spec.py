"""What the `dec` and `dcn` kinds share in their specs: an autoencoder pre-trained, then its
latent space clustered, with a cluster update every `update_interval` optimizer steps."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from ml.anomaly.autoencoder import Activation
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field, too_many_clusters
from ml.core.training_config import TrainingConfig

PAPER_UPDATE_STEPS = 140


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
    update_interval: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Optimizer steps between two cluster updates (DEC: of the target "
        "distribution P; DCN: of assignments and centroids). Each update passes every row "
        f"through the encoder. Default: {PAPER_UPDATE_STEPS} steps (Xie et al.'s T for MNIST, "
        "about half an epoch at batch size 256) or one epoch's steps, whichever is fewer.",
    )
    tol: float = Field(
        0.001,
        ge=0,
        le=1,
        description="Stop when fewer than this fraction of rows change cluster between two "
        "updates.",
    )
    n_init: int = Field(10, ge=1, le=1000, description="k-means restarts in the latent space.")

    def steps_between_updates(self, batch_size: int, rows: int) -> int:
        """`update_interval`, or its default for this many rows at this batch size."""
        if self.update_interval is not None:
            return self.update_interval
        return min(PAPER_UPDATE_STEPS, math.ceil(rows / min(batch_size, rows)))

    @model_validator(mode="after")
    def _check(self) -> DeepClusteringParams:
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden layer sizes must be positive")
        return self


class DeepClusteringSpec(JobSpec):
    """What dec and dcn share: a data set, every row of which is clustered."""

    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: DeepClusteringParams
    preprocessing: Preprocessing = preprocessing_field("standard")

    def data_problem(self, rows: int, features: int) -> str | None:
        return too_many_clusters(self.params.n_clusters, rows)


def training_field(phase: str) -> Any:
    """The `training` field of a deep clustering kind whose clustering phase is `phase`."""
    return Field(
        default_factory=TrainingConfig,
        description=f"Both phases; `epochs` is the {phase}'s (pre-training runs "
        "`params.pretrain_epochs`). Every row is clustered: `validation_split` is not used.",
    )


def example(kind: str, **params: Any) -> dict[str, Any]:
    """A spec clustering the digits: 15 pre-training epochs, then 10 of clustering with an
    update every epoch (1797 rows at batch size 128 make 15 steps)."""
    return {
        "kind": kind,
        "name": f"digits-{kind}",
        "dataset": "builtin:digits",
        "params": {
            "n_clusters": 10,
            "latent_dim": 10,
            "hidden": [128, 64],
            "pretrain_epochs": 15,
            "update_interval": 15,
            **params,
        },
        "preprocessing": {"scale": "minmax"},
        "training": {"epochs": 10, "batch_size": 128, "seed": 0},
    }
