"""The `training` section of a gradient-trained kind's job spec (names are part of the API)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

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
    name: Literal["constant", "exponential_decay", "cosine", "annealing", "thermostat"] = "constant"
    decay_steps: int = Field(1000, ge=1)
    decay_rate: float = Field(0.96, gt=0, le=1)
    staircase: bool = False
    alpha: float = Field(0.0, ge=0, le=1, description="cosine: final fraction of the rate.")
    factor: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="thermostat: the rate is multiplied by this each time the `equilibrium` "
        "metric says the fluctuation–dissipation relation holds.",
    )

    @property
    def anneals_temperature(self) -> bool:
        """`annealing` lowers the SGLD temperature (the learning rate stays constant)."""
        return self.name == "annealing"


class EarlyStopping(StrictModel):
    monitor: Literal["val_loss", "equilibrium"] = Field(
        "val_loss",
        description="val_loss: stop when it stops improving; equilibrium: stop when `patience` "
        "epochs in a row end with the fluctuation–dissipation relation holding.",
    )
    patience: int = Field(5, ge=1, description="Epochs without a better val_loss before stopping.")
    min_delta: float = Field(0.0, ge=0)


# `every_steps: "auto"`: at least AUTO_MIN_POINTS measuring points a job (every step of a job
# shorter than that), at most about AUTO_MAX_POINTS, and never more often than every
# AUTO_MIN_INTERVAL steps once that still leaves AUTO_MIN_POINTS: a measuring step costs a few plain
# steps, and this keeps the telemetry within 10% of training time for jobs of 1000 steps or more
# (bench/train_overhead.py measures it).
AUTO_MIN_POINTS = 20
AUTO_MAX_POINTS = 200
AUTO_MIN_INTERVAL = 50


def auto_interval(total_steps: int) -> int:
    """The `"auto"` measuring interval of a job of `total_steps` (full-batch) steps."""
    densest = max(1, total_steps // AUTO_MIN_POINTS)  # still AUTO_MIN_POINTS points
    sparsest = max(AUTO_MIN_INTERVAL, -(-total_steps // AUTO_MAX_POINTS))
    return min(densest, sparsest)


class TelemetryConfig(StrictModel):
    # The spec's `every_steps` is stored as `every`; `every_steps` (the attribute) is its number.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, serialize_by_alias=True)

    every: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        alias="every_steps",
        description='Record the thermodynamic metrics every n steps; "auto": at least '
        f"{AUTO_MIN_POINTS} points a job (every step of a short job), at most about "
        f"{AUTO_MAX_POINTS}, within 10% of the training time.",
    )
    microbatches: int = Field(
        4, ge=2, le=64, description="K micro-batches for the gradient-noise estimate (B/K each)."
    )
    heat: bool = Field(True, description="Measure heat with a second forward pass on the batch.")
    entropy_coordinates: int = Field(10_000, ge=100, description="Parameters sampled for entropy.")

    @property
    def every_steps(self) -> int:
        """The fixed interval; for "auto", the one of a loop that does not know its length
        (AUTO_MIN_INTERVAL). Loops that know it call `interval`."""
        return AUTO_MIN_INTERVAL if self.every == "auto" else self.every

    def interval(self, total_steps: int) -> int:
        """Measuring interval of a job of `total_steps` full-batch steps."""
        return auto_interval(total_steps) if self.every == "auto" else self.every


AUTO_BATCH = 64  # "auto": the batch of a data set large enough for AUTO_MIN_STEPS_PER_EPOCH
AUTO_MIN_STEPS_PER_EPOCH = 8


class TrainingConfig(StrictModel):
    epochs: int = Field(20, ge=1, le=100_000)
    batch_size: Annotated[int, Field(ge=2, le=65_536)] | Literal["auto"] = Field(
        "auto",
        description=f'Rows a step; "auto": {AUTO_BATCH}, or fewer (a multiple of '
        f"`telemetry.microbatches`, at least two per micro-batch) so that an epoch has at least "
        f"{AUTO_MIN_STEPS_PER_EPOCH} steps: small data sets get enough updates and measuring "
        "points.",
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    validation_split: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0, lt=2**31)
    deterministic: bool = Field(False, description="Op determinism: repeatable, somewhat slower.")
    early_stopping: EarlyStopping | None = None
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)

    @property
    def largest_batch(self) -> int:
        """The batch of a large data set (what memory estimates count)."""
        return self.batch_for(2**62)

    def batch_for(self, rows: int) -> int:
        """The batch of an epoch of `rows` training rows, before a batch larger than the data
        shrinks to fit it."""
        if self.batch_size != "auto":
            return self.batch_size
        micro = self.telemetry.microbatches
        fits = (rows // AUTO_MIN_STEPS_PER_EPOCH) // micro * micro
        return max(2 * micro, min(AUTO_BATCH // micro * micro, fits))

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if self.batch_size != "auto" and self.batch_size % self.telemetry.microbatches:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of telemetry.microbatches "
                f"({self.telemetry.microbatches})"
            )
        if self.schedule.anneals_temperature and self.optimizer.name != "sgld":
            raise ValueError("the `annealing` schedule lowers the SGLD temperature: use sgld")
        return self
