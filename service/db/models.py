"""The model registry: resolve a reference, create the next version of a name, list, delete.

A reference is a model's id, a name (its latest version) or `name@version`.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import pagination
from service.db.tables import Model
from service.errors import ServiceError

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
HOW = "refer to a model by its id, its name (the latest version) or name@version"


def _versions(session: Session, name: str) -> list[int]:
    query = select(Model.version).where(Model.name == name).order_by(Model.version)
    return list(session.scalars(query))


def _latest(session: Session, name: str) -> Model | None:
    query = select(Model).where(Model.name == name).order_by(Model.version.desc()).limit(1)
    return session.scalars(query).first()


def resolve(session: Session, ref: str) -> Model:
    """The model `ref` names; ServiceError `not_found` saying what exists otherwise."""
    ref = ref.strip()
    if UUID.match(ref):
        model = session.get(Model, ref.lower())
        if model is not None:
            return model
    name, at, version = ref.rpartition("@")
    if at and version.isdigit():
        model = session.scalars(
            select(Model).where(Model.name == name, Model.version == int(version))
        ).first()
        if model is not None:
            return model
        versions = _versions(session, name)
        if versions:
            raise ServiceError(
                "not_found",
                f"model {name!r} has no version {version}; its versions are "
                f"{', '.join(map(str, versions))}",
                {"versions": versions},
            )
    model = _latest(session, ref)
    if model is None:
        raise ServiceError("not_found", f"no model {ref!r}; {HOW} (GET /v1/models lists them)")
    return model


def next_version(session: Session, *, name: str) -> int:
    current = session.scalar(select(func.max(Model.version)).where(Model.name == name))
    return int(current or 0) + 1


def create(session: Session, *, model_id: str, name: str, **fields: Any) -> Model:
    """Insert the next version of `name` (a concurrent insert of the same name fails on the
    (name, version) constraint; the caller retries)."""
    model = Model(id=model_id, name=name, version=next_version(session, name=name), **fields)
    session.add(model)
    session.flush()
    return model


def list_page(
    session: Session, *, name: str | None, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[Model], str | None]:
    """Newest first; the cursor is the last row's (created_at, id)."""
    equal = {"name": name or None, "kind": kind or None}
    return pagination.filtered_page(session, Model, equal=equal, limit=limit, cursor=cursor)


def delete(session: Session, *, model: Model) -> None:
    session.delete(model)
    session.flush()
