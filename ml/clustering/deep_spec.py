"""What the `dec` and `dcn` kinds share in their specs: an autoencoder pre-trained, then its
latent space clustered, with a cluster update every `update_interval` optimizer steps."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from ml.anomaly.autoencoder import Activation
from ml.anomaly.sizes import autoencoder_parameters
from ml.core.sizing import FLOAT, MAX_UNITS, SizeEstimate, Width, trained
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field, too_many_clusters
from ml.core.training_config import TrainingConfig

PAPER_UPDATE_STEPS = 140
# rows × k float32 matrices of a cluster update: targets, assignments (float64: two) and distances
CLUSTER_MATRICES = 6


class DeepClusteringParams(StrictModel):
    """What DEC and DCN share: an autoencoder pre-trained, then clustered in its latent space."""

    n_clusters: int = Field(10, ge=1, le=1000, description="k; at most the number of rows.")
    latent_dim: int = Field(10, ge=1, le=4096, description="Size of the embedding z.")
    hidden: list[Width] = Field(
        default_factory=lambda: [256, 64],
        max_length=8,
        description=f"Encoder layer sizes, each at most {MAX_UNITS} (the decoder mirrors them).",
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

    def steps_between_updates(self, steps_per_epoch: int) -> int:
        """`update_interval`, or its default for epochs of this many optimizer steps."""
        if self.update_interval is not None:
            return self.update_interval
        return min(PAPER_UPDATE_STEPS, steps_per_epoch)

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

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        """The dense autoencoder on flattened rows and the centres; memory: its training, and
        the rows × k assignments, targets and distances of the cluster updates."""
        p, estimate = self.params, SizeEstimate()
        features = math.prod(row_shape)
        widths = autoencoder_parameters(
            estimate, (features,), hidden=p.hidden, latent_dim=p.latent_dim, architecture="dense"
        )
        estimate.add_parameters("params.n_clusters", p.n_clusters * p.latent_dim)
        batch = self.training.largest_batch  # type: ignore[attr-defined]
        trained(estimate, rows=rows, features=features, batch_size=batch, widths=widths)
        estimate.add_memory("params.n_clusters", CLUSTER_MATRICES * rows * p.n_clusters * FLOAT)
        return estimate


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
