"""Data set resources: built-ins and uploads in one shape, and the detail with statistics."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from ml.core.datasets import BuiltinInfo
from service.db.tables import Dataset


class DatasetOut(BaseModel):
    id: str = Field(
        description="`builtin:<name>`, or the upload's id; use it as a job's `dataset`."
    )
    name: str
    format: str = Field(description="`builtin`, `csv`, `npy`, `npz` or `parquet`")
    shape: list[int]
    dtype: str
    rows: int
    features: int
    has_labels: bool
    label_column: str | None = None
    labels: str | None = Field(None, description="What the labels mean.")
    label_type: str | None = Field(None, description="`class` or `continuous`")
    description: str | None = None
    sha256: str | None = None
    created_at: dt.datetime | None = None
    tenant: str | None = Field(
        None, description="The tenant that owns an upload; none for a built-in, which all share."
    )


class FeatureStats(BaseModel):
    index: int
    name: str | None
    mean: float | None
    std: float | None
    min: float | None
    max: float | None


class Preview(BaseModel):
    x: list[list[float | None]] = Field(description="First rows, flattened, shown features only.")
    y: list[Any] | None


class DatasetDetail(DatasetOut):
    features_total: int
    features_shown: int = Field(description="Statistics and preview cover the first features.")
    statistics: list[FeatureStats]
    preview: Preview
    label_summary: dict[str, Any] | None = Field(
        None, description="Class counts, or mean/std/min/max of continuous labels."
    )


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None


# Fields a built-in and an upload carry under the same name, and those only an upload has.
SHAPE_FIELDS = ("name", "shape", "dtype", "rows", "features")
UPLOAD_FIELDS = ("id", "format", "has_labels", "sha256", "created_at", "tenant")


def _fields(source: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(source, name) for name in names}


def builtin_out(info: BuiltinInfo) -> DatasetOut:
    return DatasetOut(
        id=info.ref,
        format="builtin",
        has_labels=info.labels is not None,
        **_fields(info, (*SHAPE_FIELDS, "labels", "label_type", "description")),
    )


def upload_out(row: Dataset) -> DatasetOut:
    labels = (row.summary or {}).get("labels") or {}
    return DatasetOut(
        label_column=row.label_column or None,
        labels=labels.get("meaning"),
        label_type=labels.get("type"),
        description=f"uploaded {row.format} file",
        **_fields(row, (*SHAPE_FIELDS, *UPLOAD_FIELDS)),
    )


def item_out(item: BuiltinInfo | Dataset) -> DatasetOut:
    return builtin_out(item) if isinstance(item, BuiltinInfo) else upload_out(item)


def detail_out(base: DatasetOut, summary: dict[str, Any]) -> DatasetDetail:
    return DatasetDetail(
        **base.model_dump(),
        features_total=summary["features_total"],
        features_shown=summary["features_shown"],
        statistics=summary["features"],
        preview=summary["preview"],
        label_summary=summary.get("labels"),
    )
