"""Kind `diffusion`: a Gaussian diffusion probabilistic model (Sohl-Dickstein et al. 2015; Ho et
al. 2020) with an ε-predicting network, EMA weights, DDPM and DDIM sampling, the variational
bound as an anomaly score, and the forward chain's entropy production."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.sizing import FLOAT, MAX_UNITS, SizeEstimate, Width, trained, use_conv
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field
from ml.core.training_config import TrainingConfig
from ml.generative.params import evaluation_split_field
from ml.generative.sizes import diffusion_parameters


class DiffusionParams(StrictModel):
    timesteps: int = Field(1000, ge=2, le=10_000, description="T, the length of the chain.")
    schedule: Literal["linear", "cosine", "sohl_dickstein"] = Field(
        "linear",
        description="β_t: `linear` (DDPM, from beta_start to beta_end), `cosine` (Nichol & "
        "Dhariwal 2021), `sohl_dickstein` (β_t = 1/(T − t + 1), the 2015 paper's short chain: "
        "use T = 40). Every β_t is clipped at 0.999.",
    )
    beta_start: float = Field(1e-4, gt=0, lt=1, description="linear: β_1.")
    beta_end: float = Field(0.02, gt=0, lt=1, description="linear: β_T.")
    hidden: list[Width] | None = Field(
        None,
        max_length=8,
        description="dense: widths of the ε-network's residual layers (default [256, 256, 256]); "
        f"conv: channels per U-Net level (default [16, 32]); each at most {MAX_UNITS}.",
    )
    architecture: Literal["auto", "dense", "conv"] = Field(
        "auto", description="`auto`: a small U-Net for image rows (H, W, C), an MLP otherwise."
    )
    time_embedding: int = Field(64, ge=4, le=1024, description="Sinusoidal embedding of t.")
    ema_decay: float = Field(
        0.999,
        ge=0,
        lt=1,
        description="Exponential moving average of the weights, used for sampling, the bound "
        "and the saved model (0: none). Warm-up: min(decay, (1 + n)/(10 + n)) after n steps.",
    )
    bound_rows: int = Field(
        128, ge=8, le=100_000, description="Validation rows for the per-epoch bound."
    )
    bound_timesteps: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Strata of t for the bound (one draw each; ≥ T − 1 sums every step).",
    )
    contamination: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="The score threshold is the (1 − c) quantile of held-out bounds.",
    )
    target_fpr: float | None = Field(None, gt=0, lt=1)
    evaluation_split: float = evaluation_split_field()

    @model_validator(mode="after")
    def _check(self) -> DiffusionParams:
        if self.schedule == "linear" and not self.beta_start < self.beta_end:
            raise ValueError("beta_start must be smaller than beta_end")
        if self.hidden is not None and (not self.hidden or any(h < 1 for h in self.hidden)):
            raise ValueError("hidden must list positive sizes")
        return self

    def resolved_hidden(self, conv: bool) -> list[int]:
        if self.hidden is not None:
            return list(self.hidden)
        return [16, 32] if conv else [256, 256, 256]


# The weights' training copies (`ml.core.sizing.WEIGHT_COPIES`) and their moving average.
EMA_WEIGHT_COPIES = 8


class DiffusionTraining(TrainingConfig):
    epochs: int = Field(40, ge=1, le=100_000)
    batch_size: int = Field(128, ge=2, le=65_536)


class DiffusionSpec(JobSpec):
    """A diffusion probabilistic model: samples (DDPM, DDIM) and bound-based anomaly scores."""

    kind: Literal["diffusion"]
    distributable: ClassVar[bool] = True
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: DiffusionParams = Field(default_factory=DiffusionParams)
    training: DiffusionTraining = Field(default_factory=DiffusionTraining)
    preprocessing: Preprocessing = preprocessing_field("standard")

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        p, estimate = self.params, SizeEstimate()
        conv_rows = use_conv(p.architecture, row_shape)
        widths = diffusion_parameters(
            estimate,
            row_shape,
            hidden=p.resolved_hidden(conv_rows),
            time_embedding=p.time_embedding,
            conv_rows=conv_rows,
        )
        features = math.prod(row_shape)
        trained(
            estimate,
            rows=rows,
            features=features,
            batch_size=self.training.largest_batch,
            widths=widths,
            weight_copies=EMA_WEIGHT_COPIES,
        )
        # The bound's rows pass through the network once per stratum of t, a batch at a time.
        estimate.add_memory("params.bound_rows", 4 * min(p.bound_rows, rows) * features * FLOAT)
        return estimate


DiffusionSpec.example = {
    "kind": "diffusion",
    "name": "swiss-roll-diffusion",
    "dataset": "builtin:swiss_roll",
    "params": {"timesteps": 40, "schedule": "sohl_dickstein", "hidden": [64, 64]},
    "training": {"epochs": 2, "batch_size": 128, "seed": 0},
}

SERVES = frozenset({"generate", "score"})


@register_kind(
    spec=DiffusionSpec,
    serves=SERVES,
    pictures=frozenset({"samples"}),
    servable="ml.generative.diffusion_model:DiffusionServable",
)
def run(spec: DiffusionSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.core.training import job_devices
    from ml.generative.diffusion_model import train_diffusion

    with job_devices(spec.resources):
        return train_diffusion(spec, reporter, context, sorted(SERVES))
