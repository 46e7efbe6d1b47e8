"""The model registry: list, read and delete trained models (inference is in `inference.py`)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service import models
from service.api.deps import (
    LoadedModelCacheDep,
    PageDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from service.db import models as model_repo
from service.schemas.common import ERROR_RESPONSES, TenantFilter
from service.schemas.models import ModelOut, ModelPage, model_out

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ModelPage)
def list_models(
    session: SessionDep,
    page: PageDep,
    principal: PrincipalDep,
    name: str | None = None,
    kind: str | None = None,
    tenant: TenantFilter = None,
) -> ModelPage:
    """The tenant's models (an admin's: every tenant's), newest first; filter by `name` (all
    its versions) or `kind`."""
    filters = {"name": name, "kind": kind, "tenant": tenant}
    items, next_cursor = model_repo.list_page(session, page, principal.scope, **filters)
    return ModelPage(items=[model_out(m) for m in items], next_cursor=next_cursor)


@router.get("/{ref}", response_model=ModelOut)
def get_model(ref: str, session: SessionDep, principal: PrincipalDep) -> ModelOut:
    """`ref` is the model's id, its name (the latest version) or `name@version`; names resolve
    within the caller's tenant."""
    return model_out(model_repo.resolve(session, ref, scope=principal.scope))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(
    ref: str,
    session: SessionDep,
    store: StoreDep,
    cache: LoadedModelCacheDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> Response:
    """Remove the model's row and every stored file of it."""
    models.delete(session, store, cache, settings, ref=ref, scope=principal.scope)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
