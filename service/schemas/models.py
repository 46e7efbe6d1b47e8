"""Model registry resources."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from service.db.tables import Model
from service.schemas.common import TenantField


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
    tenant: TenantField


class ModelPage(BaseModel):
    items: list[ModelOut]
    next_cursor: str | None


def model_out(model: Model) -> ModelOut:
    # JSON columns may hold null in rows written before they existed.
    lists = {k: list(getattr(model, k) or []) for k in ("capabilities", "pictures", "input_shape")}
    dicts = {k: getattr(model, k) or {} for k in ("preprocessing", "calibration", "evaluation")}
    plain = ("id", "name", "version", "kind", "job_id", "artifact_uri", "sha256", "created_at")
    return ModelOut(
        **{k: getattr(model, k) for k in plain},
        **lists,
        **dicts,
        files={name: ModelFile(**entry) for name, entry in (model.files or {}).items()},
        tenant=model.tenant,
    )
