"""Kind `dec`: deep embedded clustering (Xie, Girshick & Farhadi 2016). An autoencoder is
pre-trained, k-means runs in its latent space, then the encoder and the cluster centres are
refined together on KL(P‖Q) through the shared trainer (with its thermodynamic telemetry), the
target distribution P recomputed every `update_interval` optimizer steps."""

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


class DecParams(DeepClusteringParams):
    alpha: float = Field(
        1.0, gt=0, le=1000, description="Degrees of freedom of the Student-t soft assignment."
    )


class DecSpec(DeepClusteringSpec):
    """Deep embedded clustering: encodes rows and predicts soft cluster assignments."""

    kind: Literal["dec"]
    params: DecParams = Field(default_factory=DecParams)
    training: TrainingConfig = training_field("refinement")


DecSpec.example = example("dec", alpha=1.0)

SERVES = frozenset({"encode", "predict"})


register_kind(
    spec=DecSpec,
    serves=SERVES,
    servable="ml.clustering.dec_tf:DecServable",
    run="ml.clustering.dec_tf:train_dec",
)
