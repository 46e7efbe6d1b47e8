"""Kind `gan`: a generative adversarial network (Goodfellow et al. 2014). By default the seed
article's dense generator (256-512-1024, LeakyReLU 0.2, batch norm, latent 100, tanh output)
and discriminator (512-256); a small DCGAN for image rows."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.sizing import SizeEstimate, Width, trained, use_conv
from ml.core.spec import JobSpec, Preprocessing, StrictModel
from ml.core.training_config import TrainingConfig
from ml.generative.params import evaluation_split_field
from ml.generative.sizes import gan_parameters


class GanParams(StrictModel):
    latent_dim: int = Field(100, ge=1, le=4096, description="Size of the noise vector z ~ N(0, I).")
    generator_hidden: list[Width] = Field(
        default_factory=lambda: [256, 512, 1024],
        min_length=1,
        max_length=8,
        description="dense: the generator's layers (Dense → LeakyReLU(0.2) → BatchNorm each).",
    )
    discriminator_hidden: list[Width] = Field(
        default_factory=lambda: [512, 256],
        min_length=1,
        max_length=8,
        description="dense: the discriminator's layers (Dense → LeakyReLU(0.2) each).",
    )
    d_steps: int = Field(1, ge=1, le=20, description="Discriminator updates per generator update.")
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="One-sided: the discriminator's target for real rows is 1 − s.",
    )
    architecture: Literal["auto", "dense", "conv"] = Field(
        "auto",
        description="`auto`: a small DCGAN for image rows (H, W, C) with sides divisible by 4, "
        "the dense networks otherwise.",
    )
    batch_norm_momentum: float = Field(
        0.8, gt=0, lt=1, description="The generator's batch-norm momentum (the seed's 0.8)."
    )
    evaluation_split: float = evaluation_split_field()

    @model_validator(mode="after")
    def _check(self) -> GanParams:
        if any(h < 1 for h in [*self.generator_hidden, *self.discriminator_hidden]):
            raise ValueError("hidden layer sizes must be positive")
        return self


class GanSpec(JobSpec):
    kind: Literal["gan"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: GanParams = Field(default_factory=GanParams)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    preprocessing: Preprocessing = Field(
        default_factory=lambda: Preprocessing(scale="minmax", per_feature=None),
        description="Input scaling, fitted on the training split (default: minmax, which the "
        "gan maps on to [-1, 1] for the generator's tanh output; with `standard` or `none` the "
        "output is linear).",
    )

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        p, estimate = self.params, SizeEstimate()
        widths = gan_parameters(
            estimate,
            row_shape,
            latent_dim=p.latent_dim,
            generator_hidden=p.generator_hidden,
            discriminator_hidden=p.discriminator_hidden,
            conv_rows=use_conv(p.architecture, row_shape),
        )
        # A generator step runs both networks on a batch of fakes, a discriminator step on
        # real and fake rows: twice the activations of one pass.
        return trained(
            estimate,
            rows=rows,
            features=math.prod(row_shape),
            batch_size=self.training.batch_size,
            widths=[*widths, *widths],
        )


GanSpec.example = {
    "kind": "gan",
    "name": "swiss-roll-gan",
    "dataset": "builtin:swiss_roll",
    "params": {"latent_dim": 8, "generator_hidden": [64, 64], "discriminator_hidden": [64, 64]},
    "training": {"epochs": 2, "batch_size": 128, "seed": 0},
}

SERVES = frozenset({"generate"})


@register_kind(
    spec=GanSpec,
    summary="A generative adversarial network: samples, with sample-quality metrics.",
    serves=SERVES,
    pictures=frozenset({"samples"}),
    servable="ml.generative.gan_model:GanServable",
)
def run(spec: GanSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.generative.gan_model import train_gan

    return train_gan(spec, reporter, context, sorted(SERVES))
