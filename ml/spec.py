"""The parts of a job spec that every kind shares.

Each kind subclasses :class:`JobSpec` with ``kind: Literal["<name>"]`` and its own ``params``
model; the service builds the discriminated union from the registry.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Refuses unknown fields (a misspelt parameter is an error) and non-finite numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Resources(StrictModel):
    gpu: bool = Field(False, description="Run on the `gpu` queue (any device in embedded mode).")


ScaleName = Literal["minmax", "standard", "none"]


class Preprocessing(StrictModel):
    """How inputs are scaled: fitted on the training split, stored with the model, and applied
    again at inference so that clients send raw rows. Trained kinds' specs include it."""

    scale: ScaleName = Field(
        "standard",
        description="`minmax`: each feature to [0, 1]; `standard`: zero mean, unit variance; "
        "`none`: as given.",
    )
    per_feature: bool | None = Field(
        None,
        description="One scale per feature, or one for all values; default: per feature for "
        "tables, one for all pixels of images (rank-3 rows and up).",
    )


def preprocessing_field(scale: ScaleName = "standard") -> Any:
    """A `preprocessing` field whose default scale suits the kind, e.g. `minmax` for a
    Bernoulli VAE: ``preprocessing: Preprocessing = preprocessing_field("minmax")``."""
    return Field(
        default_factory=lambda: Preprocessing(scale=scale),
        description=f"Input scaling, fitted on the training split (default scale: {scale}).",
    )


class JobSpec(StrictModel):
    """Fields every job spec carries; subclasses narrow `kind` and add `params`."""

    kind: str
    name: str | None = Field(
        None, max_length=200, description="A label for people; defaults to `<kind>-<id prefix>`."
    )
    dataset: str | None = Field(
        None, max_length=300, description="`builtin:<name>` or an uploaded data set's id."
    )
    resources: Resources = Field(default_factory=Resources)
    priority: int = Field(5, ge=0, le=9, description="0 (lowest) to 9 (highest).")

    example: ClassVar[dict[str, Any]] = {}

    @property
    def queue(self) -> str:
        return "gpu" if self.resources.gpu else "cpu"
