"""Uploaded data set rows: create, find by content, read, list, delete, and which jobs use one."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from service.db.tables import Dataset, Job
from service.errors import ServiceError

ACTIVE = ("queued", "running")


def get(session: Session, *, dataset_id: str) -> Dataset:
    """The uploaded data set, or 404."""
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise ServiceError(
            "not_found",
            f"data set {dataset_id} does not exist; GET /v1/datasets lists the built-ins and "
            "uploads",
        )
    return row


def find(session: Session, *, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def find_same_content(session: Session, *, sha256: str, label_column: str) -> Dataset | None:
    """The data set already stored with this content and label column, if any."""
    query = select(Dataset).where(Dataset.sha256 == sha256, Dataset.label_column == label_column)
    return session.scalars(query).first()


def create(session: Session, **fields: Any) -> Dataset:
    """Insert a row (the caller commits)."""
    row = Dataset(**fields)
    session.add(row)
    session.flush()
    return row


def encode_cursor(row: Dataset) -> str:
    raw = json.dumps(["upload", row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def list_page(
    session: Session, *, limit: int, after: tuple[dt.datetime, str] | None
) -> tuple[Sequence[Dataset], str | None]:
    """Uploads, newest first, after the cursor position (created_at, id)."""
    query = select(Dataset)
    if after is not None:
        created, last_id = after
        query = query.where(
            or_(
                Dataset.created_at < created,
                and_(Dataset.created_at == created, Dataset.id < last_id),
            )
        )
    ordered = query.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit + 1)
    rows = list(session.scalars(ordered))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def active_jobs_using(session: Session, *, dataset_id: str) -> list[str]:
    """Ids of queued or running jobs whose spec names this data set."""
    query = select(Job.id).where(
        Job.status.in_(ACTIVE), Job.spec["dataset"].as_string() == dataset_id
    )
    return list(session.scalars(query))


def delete(session: Session, *, row: Dataset) -> None:
    session.delete(row)
    session.flush()
