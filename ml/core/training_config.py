"""The `training` section of a gradient-trained kind's job spec (names are part of the API)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ml.core.spec import StrictModel


class OptimizerConfig(StrictModel):
    name: Literal["adam", "sgd", "rmsprop", "sgld"] = "adam"
    learning_rate: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd (and sgld) momentum μ.")
    weight_decay: float = Field(0.0, ge=0, description="L2 coefficient λ: loss + λ/2 |θ|².")
    temperature: float = Field(
        1e-4, ge=0, description="sgld only: T of the injected noise sqrt(2 η T) ξ, in loss units."
    )
    beta_1: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="adam only: decay of the gradient's running mean (default 0.9; 0.5 is usual "
        "for GANs).",
    )
    beta_2: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="adam only: decay of the squared gradient's running mean (default 0.999).",
    )

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        # Checked on values, not on what was set: a stored spec is re-read with every field.
        if self.name != "adam" and (self.beta_1 is not None or self.beta_2 is not None):
            raise ValueError(f"beta_1 and beta_2 are adam's; {self.name} has none")
        return self


class ScheduleConfig(StrictModel):
    name: Literal["constant", "exponential_decay", "cosine", "annealing"] = "constant"
    decay_steps: int = Field(1000, ge=1)
    decay_rate: float = Field(0.96, gt=0, le=1)
    staircase: bool = False
    alpha: float = Field(0.0, ge=0, le=1, description="cosine: final fraction of the rate.")

    @property
    def anneals_temperature(self) -> bool:
        """`annealing` lowers the SGLD temperature (the learning rate stays constant)."""
        return self.name == "annealing"


class EarlyStopping(StrictModel):
    patience: int = Field(5, ge=1, description="Epochs without a better val_loss before stopping.")
    min_delta: float = Field(0.0, ge=0)


class TelemetryConfig(StrictModel):
    every_steps: int = Field(
        50, ge=1, description="Record the thermodynamic metrics every n steps."
    )
    microbatches: int = Field(
        4, ge=2, le=64, description="K micro-batches for the gradient-noise estimate (B/K each)."
    )
    heat: bool = Field(True, description="Measure heat with a second forward pass on the batch.")
    entropy_coordinates: int = Field(10_000, ge=100, description="Parameters sampled for entropy.")


class TrainingConfig(StrictModel):
    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: int = Field(64, ge=2, le=65_536)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    validation_split: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0, lt=2**31)
    deterministic: bool = Field(False, description="Op determinism: repeatable, somewhat slower.")
    early_stopping: EarlyStopping | None = None
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if self.batch_size % self.telemetry.microbatches:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of telemetry.microbatches "
                f"({self.telemetry.microbatches})"
            )
        if self.schedule.anneals_temperature and self.optimizer.name != "sgld":
            raise ValueError("the `annealing` schedule lowers the SGLD temperature: use sgld")
        return self
