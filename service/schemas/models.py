"""Model registry resources."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from service.db.tables import Model


class ModelFile(BaseModel):
    key: str = Field(description="Object key under the artifact store's root.")
    sha256: str
    size: int


class ModelOut(BaseModel):
    id: str
    name: str
    version: int
    kind: str
    job_id: str | None
    capabilities: list[str] = Field(description="Operations it serves (encode, score, ...).")
    pictures: list[str]
    input_shape: list[int]
    preprocessing: dict[str, Any] = Field(
        description="The fitted input scaling, applied to raw inputs at inference."
    )
    calibration: dict[str, Any]
    evaluation: dict[str, Any]
    artifact_uri: str = Field(description="Prefix of the model's stored files.")
    sha256: str = Field(description="sha256 of the file manifest.")
    files: dict[str, ModelFile]
    created_at: dt.datetime


class ModelPage(BaseModel):
    items: list[ModelOut]
    next_cursor: str | None


def model_out(model: Model) -> ModelOut:
    return ModelOut(
        id=model.id,
        name=model.name,
        version=model.version,
        kind=model.kind,
        job_id=model.job_id,
        capabilities=list(model.capabilities or []),
        pictures=list(model.pictures or []),
        input_shape=list(model.input_shape or []),
        preprocessing=model.preprocessing or {},
        calibration=model.calibration or {},
        evaluation=model.evaluation or {},
        artifact_uri=model.artifact_uri,
        sha256=model.sha256,
        files={name: ModelFile(**entry) for name, entry in (model.files or {}).items()},
        created_at=model.created_at,
    )
