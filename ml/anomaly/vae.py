"""Kind `vae`: a variational autoencoder; its loss is a variational free energy
F = distortion + β·rate (−ELBO), its anomaly score the −ELBO of a row."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ml.anomaly.autoencoder import AutoencoderParams, AutoencoderSpec
from ml.anomaly.scoring import run_autoencoding
from ml.core.registry import register_kind
from ml.core.sizing import SizeEstimate

if TYPE_CHECKING:
    from ml.anomaly.autoencoding import VaeObjective


class VaeParams(AutoencoderParams):
    latent_heads: ClassVar[int] = 2  # the mean and the log variance
    beta: float = Field(1.0, gt=0, description="Weight of the rate: a temperature on it.")
    likelihood: Literal["gaussian", "bernoulli"] = Field(
        "gaussian", description="Decoder likelihood; bernoulli needs inputs in [0, 1] (minmax)."
    )
    ensemble_size: int = Field(1, ge=1, le=1, description="One network (no seed ensemble).")

    @property
    def unit_interval_inputs(self) -> bool:
        return self.likelihood == "bernoulli" or super().unit_interval_inputs

    def add_own_parameters(self, estimate: SizeEstimate, row_shape: tuple[int, ...]) -> None:
        """The Gaussian decoder's log σ, one per data dimension (held for both likelihoods)."""
        estimate.add_parameters("dataset", math.prod(row_shape))

    def objective(self, input_shape: tuple[int, ...]) -> VaeObjective:  # type: ignore[override]
        from ml.anomaly.autoencoding import VaeObjective

        return VaeObjective(self, input_shape)


class VaeSpec(AutoencoderSpec):
    """A variational autoencoder: encode, reconstruct, anomaly scores (−ELBO), samples."""

    kind: Literal["vae"]  # type: ignore[assignment]
    params: VaeParams = Field(default_factory=VaeParams)


VaeSpec.example = {
    "kind": "vae",
    "name": "digits-vae",
    "dataset": "builtin:digits",
    "params": {"latent_dim": 8, "likelihood": "bernoulli", "architecture": "dense"},
    "preprocessing": {"scale": "minmax"},
    "training": {"epochs": 20, "batch_size": 64, "seed": 0},
}

register_kind(
    spec=VaeSpec,
    serves=frozenset({"encode", "reconstruct", "score", "generate"}),
    servable="ml.anomaly.serving:VaeServable",
)(run_autoencoding)
