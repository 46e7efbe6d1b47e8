"""Kind `autoencoder`: dense or convolutional autoencoders, anomaly scores calibrated on held-out
normal data, and the thermodynamic training telemetry of every gradient-trained kind."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from ml.anomaly.scoring import run_autoencoding
from ml.anomaly.sizes import autoencoder_parameters
from ml.core.registry import register_kind
from ml.core.sizing import MAX_UNITS, SizeEstimate, Width, trained
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field
from ml.core.training_config import TrainingConfig

if TYPE_CHECKING:
    from ml.anomaly.autoencoding import AutoencoderEnsemble, AutoencoderObjective

Activation = Literal["relu", "elu", "gelu", "selu", "tanh", "leaky_relu", "sigmoid"]
Labels = int | list[int] | None
MAX_ENSEMBLE = 16


class AnomalyThreshold(StrictModel):
    """Where an anomaly score's threshold comes from, and what it is evaluated on: the params
    of every kind that learns normal rows and scores new ones."""

    contamination: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Expected anomaly share: the threshold is the (1 − c) quantile of held-out "
        "normal scores.",
    )
    target_fpr: float | None = Field(
        None, gt=0, lt=1, description="Set the threshold for this false-positive rate instead."
    )
    normal_label: Labels = Field(None, description="Label(s) of the normal class to learn.")
    anomaly_label: Labels = Field(
        None, description="Label(s) of anomalies (default: the data set's anomaly class, if any)."
    )
    evaluation_split: float = Field(
        0.2, ge=0, lt=0.9, description="Labelled rows held out for ROC-AUC / PR-AUC."
    )


class AutoencoderParams(AnomalyThreshold):
    latent_heads: ClassVar[int] = 1  # dense layers onto the latent space
    latent_dim: int = Field(4, ge=1, le=4096)
    hidden: list[Width] = Field(
        default_factory=lambda: [32], max_length=8, description=f"Layer widths, ≤ {MAX_UNITS}."
    )
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=0.9)
    noise_std: float = Field(
        0.0, ge=0, description="Denoising: Gaussian input noise (scaled units)."
    )
    architecture: Literal["auto", "dense", "conv"] = Field(
        "auto", description="`auto`: conv for image rows (H, W, C), dense otherwise."
    )
    reconstruction_loss: Literal["mse", "binary_crossentropy"] = Field(
        "mse", description="Mean over features; cross-entropy needs inputs in [0, 1] (minmax)."
    )
    output_activation: Literal["auto", "linear", "sigmoid"] = "auto"
    ensemble_size: int = Field(
        1,
        ge=1,
        le=MAX_ENSEMBLE,
        description="Networks trained side by side from initial weights of their own; a row's "
        "reconstruction is the mean of theirs.",
    )

    @model_validator(mode="after")
    def _check(self) -> AutoencoderParams:
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden layer sizes must be positive")
        if self.normal_label is not None and self.anomaly_label is not None:
            raise ValueError("give normal_label or anomaly_label, not both")
        return self

    @property
    def resolved_loss(self) -> str:
        return self.reconstruction_loss

    @property
    def resolved_output_activation(self) -> str:
        if self.output_activation == "auto":
            return "sigmoid" if self.reconstruction_loss == "binary_crossentropy" else "linear"
        return self.output_activation

    @property
    def unit_interval_inputs(self) -> bool:
        """Whether the loss needs scaled inputs in [0, 1]."""
        return self.resolved_loss == "binary_crossentropy"

    def size_estimate(self, rows: int, row_shape: tuple[int, ...], batch_size: int) -> SizeEstimate:
        """Weights and peak training memory on `rows` rows of `row_shape` (no TensorFlow)."""
        network, estimate = SizeEstimate(), SizeEstimate()
        widths = autoencoder_parameters(
            network,
            row_shape,
            hidden=self.hidden,
            latent_dim=self.latent_dim,
            architecture=self.architecture,
            latent_heads=self.latent_heads,
        )
        for name, count in network.parameters.items():
            estimate.add_parameters(name, count)
            if self.ensemble_size > 1:
                estimate.add_parameters("params.ensemble_size", (self.ensemble_size - 1) * count)
        self.add_own_parameters(estimate, row_shape)
        features = math.prod(row_shape)
        widths *= self.ensemble_size
        return trained(estimate, rows=rows, features=features, batch_size=batch_size, widths=widths)

    def add_own_parameters(self, estimate: SizeEstimate, row_shape: tuple[int, ...]) -> None:
        """Weights outside the networks: none."""

    def objective(self, input_shape: tuple[int, ...]) -> AutoencoderObjective | AutoencoderEnsemble:
        """The training objective these params describe, for rows of `input_shape`."""
        from ml.anomaly.autoencoding import AutoencoderEnsemble, AutoencoderObjective

        if self.ensemble_size > 1:
            return AutoencoderEnsemble(self, input_shape)
        return AutoencoderObjective(self, input_shape)


class AutoencoderSpec(JobSpec):
    """An autoencoder for representation learning and anomaly scores."""

    kind: Literal["autoencoder"]
    distributable: ClassVar[bool] = True
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: AutoencoderParams = Field(default_factory=AutoencoderParams)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    preprocessing: Preprocessing = preprocessing_field("standard")

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        return self.params.size_estimate(rows, row_shape, self.training.largest_batch)


AutoencoderSpec.example = {
    "kind": "autoencoder",
    "name": "breast-cancer-ae",
    "dataset": "builtin:breast_cancer",
    "params": {"latent_dim": 4, "hidden": [32, 16], "contamination": 0.05},
    "preprocessing": {"scale": "standard"},
    "training": {"epochs": 30, "batch_size": 32, "seed": 0},
}

register_kind(
    spec=AutoencoderSpec,
    serves=frozenset({"encode", "reconstruct", "score"}),
    servable="ml.anomaly.serving:AutoencoderServable",
)(run_autoencoding)
