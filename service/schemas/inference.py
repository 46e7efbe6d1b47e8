"""Model operation requests and answers: rows to encode, reconstruct, score or predict; samples
to generate; the JSON answer of each operation (non-finite numbers are sent as null)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from service.inputs import check_json

# One row: numbers, or nested lists of numbers for a model whose input is an image (h, w, c).
ROW_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"anyOf": [{"type": "number"}, {"type": "array", "items": {}}]},
}
# Answer rows hold null where a value is not finite.
ANSWER_ROW_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"anyOf": [{"type": "number"}, {"type": "null"}, {"type": "array", "items": {}}]},
}
NumberRows = list[list[float | None]]
NestedRows = Annotated[list[Any], WithJsonSchema({"type": "array", "items": ANSWER_ROW_SCHEMA})]


class Rows(BaseModel):
    """The rows of `encode`, `reconstruct`, `score` and `predict` as JSON (the same operations
    also take `application/x-npy` and `application/vnd.apache.arrow.stream` bodies)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"inputs": [[0.1, 0.2, 0.3]]}]}, extra="forbid"
    )
    # Validated as any list (the service reads and checks rows itself, naming what is wrong);
    # the schema says what a row is.
    inputs: Annotated[
        list[Any], WithJsonSchema({"type": "array", "minItems": 1, "items": ROW_SCHEMA})
    ] = Field(
        description="Rows in the data's raw units; each row of the model's input shape "
        "(or flattened to as many numbers).",
        min_length=1,
    )


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(16, ge=1, description="Number of samples.")
    seed: int | None = Field(None, ge=0, lt=2**31, description="Same seed, same samples.")
    sampler: str | None = Field(None, description="Diffusion: `ddpm` or `ddim`.")
    steps: int | None = Field(None, ge=1, description="Diffusion: sampling steps.")

    @model_validator(mode="before")
    @classmethod
    def _checked_json(cls, value: Any) -> Any:
        check_json(value)  # ServiceError (422) naming the field: passes through pydantic
        return value


class ScoreOut(BaseModel):
    scores: list[float | None] = Field(description="Anomaly score per row; higher is stranger.")
    threshold: float | None = Field(
        description="The calibrated threshold (null when the model has none)."
    )
    is_anomaly: list[bool] = Field(description="Per row: its score is above the threshold.")


class EncodeOut(BaseModel):
    latents: NumberRows = Field(description="Latent vector per row (a VAE's: the means).")
    log_variances: NumberRows | None = Field(
        None, description="VAE only: the log-variance of each latent coordinate."
    )


class ReconstructOut(BaseModel):
    reconstructions: NestedRows = Field(
        description="Each row reconstructed, in the data's raw units and the input's shape."
    )


class GenerateOut(BaseModel):
    samples: NestedRows = Field(description="Samples in the data's raw units and shape.")


class PredictOut(BaseModel):
    clusters: list[int] = Field(description="Cluster id per row.")
    probabilities: NumberRows | None = Field(
        None, description="Soft-assignment kinds: each row's probability per cluster."
    )
    distances: NumberRows | None = Field(
        None, description="Centroid kinds: each row's distance to every centroid."
    )


ANSWER_MODELS: dict[str, type[BaseModel]] = {
    "encode": EncodeOut,
    "reconstruct": ReconstructOut,
    "score": ScoreOut,
    "predict": PredictOut,
    "generate": GenerateOut,
}
