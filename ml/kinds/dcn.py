"""Kind `dcn`: deep clustering network (Yang et al. 2017). An autoencoder is pre-trained, k-means
runs in its latent space, then network updates on reconstruction + (λ/2)·‖f(x) − M s‖² (through
the shared trainer, with its telemetry) alternate with assignment and centroid updates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.training_config import TrainingConfig
from ml.kinds.dec import DeepClusteringParams, DeepClusteringSpec


class DcnParams(DeepClusteringParams):
    clustering_weight: float = Field(
        0.1,
        ge=0,
        le=1e6,
        description="λ in reconstruction + (λ/2)‖f(x) − M s‖² (reconstruction: mean squared "
        "error over features).",
    )


class DcnSpec(DeepClusteringSpec):
    kind: Literal["dcn"]
    params: DcnParams = Field(default_factory=DcnParams)
    training: TrainingConfig = Field(
        default_factory=TrainingConfig,
        description="Both phases; `epochs` is the joint phase's (pre-training runs "
        "`params.pretrain_epochs`). Every row is clustered: `validation_split` is not used.",
    )


DcnSpec.example = {
    "kind": "dcn",
    "name": "digits-dcn",
    "dataset": "builtin:digits",
    "params": {
        "n_clusters": 10,
        "latent_dim": 10,
        "hidden": [128, 64],
        "pretrain_epochs": 15,
        "clustering_weight": 0.1,
    },
    "preprocessing": {"scale": "minmax"},
    "training": {"epochs": 10, "batch_size": 128, "seed": 0},
}

SERVES = frozenset({"encode", "predict"})


@register_kind(
    name="dcn",
    spec=DcnSpec,
    summary="Deep clustering network: an autoencoder trained jointly with k-means in its latents.",
    category="model",
    serves=SERVES,
    servable="ml.dcn:DcnServable",
)
def run(spec: DcnSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.dcn import train_dcn

    return train_dcn(spec, reporter, context)
