"""Kind `dcn`: deep clustering network (Yang et al. 2017). An autoencoder is pre-trained, k-means
runs in its latent space, then network updates on reconstruction + (λ/2)·‖f(x) − M s‖² (through
the shared trainer, with its telemetry) alternate with assignment and centroid updates, one every
`update_interval` optimizer steps."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ml.clustering.deep_spec import (
    DeepClusteringParams,
    DeepClusteringSpec,
    example,
    training_field,
)
from ml.core.registry import register_kind
from ml.core.training_config import TrainingConfig


class DcnParams(DeepClusteringParams):
    clustering_weight: float = Field(
        0.1,
        ge=0,
        le=1e6,
        description="λ in reconstruction + (λ/2)‖f(x) − M s‖² (reconstruction: mean squared "
        "error over features).",
    )


class DcnSpec(DeepClusteringSpec):
    """Deep clustering network: an autoencoder trained jointly with k-means in its latents."""

    kind: Literal["dcn"]
    params: DcnParams = Field(default_factory=DcnParams)
    training: TrainingConfig = training_field("joint phase")


DcnSpec.example = example("dcn", clustering_weight=0.1)

SERVES = frozenset({"encode", "predict"})


register_kind(
    spec=DcnSpec,
    serves=SERVES,
    servable="ml.clustering.dcn_tf:DcnServable",
    run="ml.clustering.dcn_tf:train_dcn",
)
