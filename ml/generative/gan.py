"""Kind `gan`: a generative adversarial network (Goodfellow et al. 2014). By default dense
256-256 players with the non-saturating loss, R1, an averaged generator and the best epoch kept
(`preset: "seed"`: the seed article's networks and training); a small DCGAN for image rows."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.sizing import SizeEstimate, Width, trained, use_conv
from ml.core.spec import JobSpec, Preprocessing, StrictModel
from ml.core.training_config import AUTO_BATCH, TrainingConfig
from ml.generative.params import OBJECTIVE_DEFAULTS, ObjectiveDefaults, evaluation_split_field
from ml.generative.sizes import gan_parameters

# The seed article's GAN, as its example trains it (Adam with Keras's own betas, one
# discriminator step, no averaging); `preset: "seed"` fills in any of these a spec leaves out.
SEED_PRESET: dict[str, Any] = {
    "latent_dim": 100,
    "generator_hidden": [256, 512, 1024],
    "discriminator_hidden": [512, 256],
    "loss": "non_saturating",
    "r1": 0.0,
    "ema": 0.0,
    "keep": "last",
    "batch_norm": True,
    "batch_norm_momentum": 0.8,
}
# Chosen by measurement (docs/generative.md, "Which objective").
DEFAULT_PRESET: dict[str, Any] = {
    "latent_dim": 16,
    "generator_hidden": [256, 256],
    "discriminator_hidden": [256, 256],
    "loss": "non_saturating",
    "r1": 1.0,
    "ema": 0.999,
    "keep": "best",
    "batch_norm": False,
    "batch_norm_momentum": 0.8,
}
# The default preset's Adam rate (its betas are the objective's, OBJECTIVE_DEFAULTS) and epochs:
# with 2e-4 and 20 the swiss roll's energy distance ended at 3x its floor and still falling; with
# 1e-3 and 40, at 1.5-1.8x (measured: docs/generative.md, "Training defaults").
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_EPOCHS = 40
SHARED_EPOCHS: int = TrainingConfig.model_fields["epochs"].default
PRESETS = {"default": DEFAULT_PRESET, "seed": SEED_PRESET}


class GanParams(StrictModel):
    preset: Literal["default", "seed"] = Field(
        "default",
        description="Where the fields a spec leaves out come from: `default` (a GAN that "
        "converges on small data) or `seed` (the seed article's: dense 256-512-1024, "
        "LeakyReLU, batch norm 0.8, non-saturating loss, Keras's Adam).",
    )
    latent_dim: int = Field(16, ge=1, le=4096, description="Size of the noise vector z ~ N(0, I).")
    generator_hidden: list[Width] = Field(
        default_factory=lambda: [256, 256],
        min_length=1,
        max_length=8,
        description="dense: the generator's layers (Dense → LeakyReLU(0.2) → BatchNorm each).",
    )
    discriminator_hidden: list[Width] = Field(
        default_factory=lambda: [256, 256],
        min_length=1,
        max_length=8,
        description="dense: the discriminator's layers (Dense → LeakyReLU(0.2) each).",
    )
    loss: Literal["non_saturating", "wgan_gp", "hinge"] = Field(
        "non_saturating",
        description="The players' objective: `non_saturating` (Goodfellow 2014), `wgan_gp` "
        "(Wasserstein with gradient penalty, Gulrajani 2017) or `hinge` (Miyato 2018).",
    )
    gradient_penalty: float = Field(
        10.0, ge=0, le=1000, description="wgan_gp: the gradient penalty's weight λ."
    )
    r1: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="γ of the R1 penalty γ/2·|∇D(x)|² on real rows (Mescheder 2018), any loss; "
        "0: none.",
    )
    spectral_norm: bool | None = Field(
        None,
        description="Spectrally normalise the discriminator's layers (default: for `hinge`).",
    )
    d_steps: int | None = Field(
        None,
        ge=1,
        le=20,
        description="Discriminator updates per generator update (default: 5 for wgan_gp, else 1).",
    )
    d_learning_rate: float | None = Field(
        None,
        gt=0,
        le=10,
        description="The discriminator's learning rate (two time-scale updates); default: "
        "`training.optimizer.learning_rate`, the generator's.",
    )
    ema: float = Field(
        0.999,
        ge=0,
        lt=1,
        description="Decay of the moving average of the generator's weights that `generate` "
        "and the saved model use; 0: the last weights.",
    )
    keep: Literal["best", "last"] = Field(
        "best",
        description="The generator the model keeps: the epoch's with the best sample quality on "
        "held-out rows (energy distance; Fréchet distance for images), or the last one's.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="non_saturating: one-sided, the discriminator's target for real rows is 1 − s.",
    )
    architecture: Literal["auto", "dense", "conv"] = Field(
        "auto",
        description="`auto`: a small DCGAN for image rows (H, W, C) with sides divisible by 4, "
        "the dense networks otherwise.",
    )
    batch_norm: bool = Field(
        False, description="dense: batch norm after each of the generator's layers (the seed's)."
    )
    batch_norm_momentum: float = Field(
        0.8, gt=0, lt=1, description="The generator's batch-norm momentum (the seed's 0.8)."
    )
    evaluation_split: float = evaluation_split_field()

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and isinstance(data.get("preset"), str)
            and data["preset"] in PRESETS
        ):
            return {**PRESETS[data["preset"]], **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> GanParams:
        if any(h < 1 for h in [*self.generator_hidden, *self.discriminator_hidden]):
            raise ValueError("hidden layer sizes must be positive")
        if self.label_smoothing and self.loss != "non_saturating":
            raise ValueError("label_smoothing is for loss non_saturating only")
        return self

    @property
    def objective_defaults(self) -> ObjectiveDefaults:
        return OBJECTIVE_DEFAULTS[self.loss]

    @property
    def discriminator_steps(self) -> int:
        return self.d_steps or self.objective_defaults.d_steps

    @property
    def spectral(self) -> bool:
        if self.spectral_norm is None:
            return self.objective_defaults.spectral_norm
        return self.spectral_norm


def preset_training(training: dict[str, Any], params: dict[str, Any] | None = None) -> dict:
    """`training` with the preset's epochs, batch size, Adam rate and betas where it leaves them
    out: the default preset's rate and the objective's betas, or the seed's shared defaults."""
    params = params or {}
    if params.get("preset") == "seed":  # the shared defaults, as the gan kind had them
        return {"batch_size": AUTO_BATCH, "epochs": SHARED_EPOCHS, **training}
    optimizer = training.get("optimizer") or {}
    if not isinstance(optimizer, dict):
        return training
    loss = params.get("loss", DEFAULT_PRESET["loss"])
    defaults = OBJECTIVE_DEFAULTS.get(loss) if isinstance(loss, str) else None  # else a 422 later
    if defaults is None or optimizer.get("name", "adam") != "adam":
        return training
    filled = {
        "learning_rate": DEFAULT_LEARNING_RATE,
        "beta_1": defaults.beta_1,
        "beta_2": defaults.beta_2,
    }
    return {**training, "optimizer": {**filled, **optimizer}}


class GanTraining(TrainingConfig):
    # Small batches and more epochs than other kinds: more generator updates, which small
    # low-dimensional data sets need (measured).
    epochs: int = Field(DEFAULT_EPOCHS, ge=1, le=100_000)
    batch_size: int = Field(32, ge=2, le=65_536)


class GanSpec(JobSpec):
    """A generative adversarial network: samples, with sample-quality metrics."""

    kind: Literal["gan"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: GanParams = Field(default_factory=GanParams)
    training: GanTraining = Field(default_factory=lambda: GanTraining(**preset_training({})))
    preprocessing: Preprocessing = Field(
        default_factory=lambda: Preprocessing(scale="minmax", per_feature=None),
        description="Input scaling, fitted on the training split (default: minmax, which the "
        "gan maps on to [-1, 1] for the generator's tanh output; with `standard` or `none` the "
        "output is linear).",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset_training(cls, data: Any) -> Any:
        """The preset's optimizer settings where `training.optimizer` leaves them out (the seed
        preset: Keras's Adam, as the article trains)."""
        if not isinstance(data, dict):
            return data
        params, training = data.get("params") or {}, data.get("training") or {}
        if not isinstance(params, dict) or not isinstance(training, dict):
            return data
        return {**data, "training": preset_training(training, params)}

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        p, estimate = self.params, SizeEstimate()
        widths = gan_parameters(
            estimate,
            row_shape,
            latent_dim=p.latent_dim,
            generator_hidden=p.generator_hidden,
            discriminator_hidden=p.discriminator_hidden,
            conv_rows=use_conv(p.architecture, row_shape),
            batch_norm=p.batch_norm,
            spectral=p.spectral,
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
    serves=SERVES,
    pictures=frozenset({"samples"}),
    servable="ml.generative.gan_serving:GanServable",
)
def run(spec: GanSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.generative.gan_model import train_gan

    return train_gan(spec, reporter, context, sorted(SERVES))
