"""Uploaded data set rows: create, find by content, read, list, delete, and which jobs use one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, true
from sqlalchemy.orm import Session

from service.db import pagination
from service.db.tables import Dataset, Job
from service.db.tenancy import Scope
from service.errors import ServiceError

ACTIVE = ("queued", "running")


def get(session: Session, *, dataset_id: str, scope: Scope) -> Dataset:
    """The uploaded data set, if `scope` reaches it; 404 otherwise (another tenant's data set is
    as absent as a missing one)."""
    row = find(session, dataset_id=dataset_id, scope=scope)
    if row is None:
        raise ServiceError(
            "not_found",
            f"data set {dataset_id} does not exist; GET /v1/datasets lists the built-ins and "
            "uploads",
        )
    return row


def find(session: Session, *, dataset_id: str, scope: Scope) -> Dataset | None:
    row = session.get(Dataset, dataset_id)
    return row if row is not None and scope.reaches(row.tenant) else None


def find_same_content(
    session: Session, *, sha256: str, label_column: str, tenant: str
) -> Dataset | None:
    """The tenant's data set already stored with this content and label column, if any."""
    query = select(Dataset).where(
        Dataset.tenant == tenant, Dataset.sha256 == sha256, Dataset.label_column == label_column
    )
    return session.scalars(query).first()


def create(session: Session, **fields: Any) -> Dataset:
    """Insert a row (the caller commits)."""
    row = Dataset(**fields)
    session.add(row)
    session.flush()
    return row


def list_page(
    session: Session,
    *,
    limit: int,
    after: pagination.Position | None,
    scope: Scope,
    tenant: str | None = None,
) -> tuple[list[Dataset], str | None]:
    """The uploads `scope` reaches (of `tenant` only, if given), newest first, after the cursor
    position (created_at, id); the next cursor is tagged `upload` (the listing puts the
    built-ins first)."""
    query = select(Dataset).where(
        scope.where(Dataset.tenant), true() if tenant is None else Dataset.tenant == tenant
    )
    return pagination.page(session, query, Dataset, limit=limit, after=after, tag=("upload",))


def active_jobs_using(session: Session, *, dataset_id: str) -> list[str]:
    """Ids of queued or running jobs whose spec names this data set."""
    query = select(Job.id).where(
        Job.status.in_(ACTIVE), Job.spec["dataset"].as_string() == dataset_id
    )
    return list(session.scalars(query))


def delete(session: Session, *, row: Dataset) -> None:
    session.delete(row)
    session.flush()
