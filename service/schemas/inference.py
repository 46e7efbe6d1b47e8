"""Model operation requests: rows to encode, reconstruct, score or predict; samples to generate."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.inputs import check_json


class Rows(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"inputs": [[0.1, 0.2, 0.3]]}]}, extra="forbid"
    )
    inputs: list[Any] = Field(
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
