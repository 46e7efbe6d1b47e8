"""The model registry: resolve a reference, create the next version of a name, list, delete.

A reference is a model's id, a name (its latest version) or `name@version`. Names belong to a
tenant: they resolve within the caller's own tenant (two tenants may both own `cancer-ae`); an id
resolves when the caller's scope reaches its tenant (an admin's reaches all).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import pagination
from service.db.tables import Model
from service.db.tenancy import DEFAULT, Scope
from service.errors import ServiceError

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
HOW = "refer to a model by its id, its name (the latest version) or name@version"


def _versions(session: Session, name: str, tenant: str) -> list[int]:
    query = select(Model.version).where(Model.tenant == tenant, Model.name == name)
    return list(session.scalars(query.order_by(Model.version)))


def _latest(session: Session, name: str, tenant: str) -> Model | None:
    query = select(Model).where(Model.tenant == tenant, Model.name == name)
    return session.scalars(query.order_by(Model.version.desc()).limit(1)).first()


def resolve(session: Session, ref: str, *, scope: Scope) -> Model:
    """The model `ref` names, for a caller of this scope; ServiceError `not_found` saying what
    exists (in the caller's tenant) otherwise."""
    ref = ref.strip()
    if UUID.match(ref):
        model = session.get(Model, ref.lower())
        if model is not None and scope.reaches(model.tenant):
            return model
    name, at, version = ref.rpartition("@")
    if at and version.isdigit():
        model = session.scalars(
            select(Model).where(
                Model.tenant == scope.tenant, Model.name == name, Model.version == int(version)
            )
        ).first()
        if model is not None:
            return model
        versions = _versions(session, name, scope.tenant)
        if versions:
            raise ServiceError(
                "not_found",
                f"model {name!r} has no version {version}; its versions are "
                f"{', '.join(map(str, versions))}",
                {"versions": versions},
            )
    model = _latest(session, ref, scope.tenant)
    if model is None:
        raise ServiceError("not_found", f"no model {ref!r}; {HOW} (GET /v1/models lists them)")
    return model


def next_version(session: Session, *, name: str, tenant: str = DEFAULT) -> int:
    query = select(func.max(Model.version)).where(Model.tenant == tenant, Model.name == name)
    return int(session.scalar(query) or 0) + 1


def create(
    session: Session, *, model_id: str, name: str, tenant: str = DEFAULT, **fields: Any
) -> Model:
    """Insert the next version of `name` in `tenant` (a concurrent insert of the same name fails
    on the (tenant, name, version) constraint; the caller retries)."""
    version = next_version(session, name=name, tenant=tenant)
    model = Model(id=model_id, name=name, tenant=tenant, version=version, **fields)
    session.add(model)
    session.flush()
    return model


def list_page(
    session: Session, page: pagination.PageRequest, scope: Scope, **equal: str | None
) -> tuple[list[Model], str | None]:
    """The models `scope` reaches, newest first, filtered on name, kind or tenant (`equal`)."""
    return pagination.filtered_page(session, Model, page, scope, **equal)


def delete(session: Session, *, model: Model) -> None:
    session.delete(model)
    session.flush()
