"""The model registry: list, read and delete trained models (inference is in `inference.py`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from service.api.deps import SessionDep, StoreDep
from service.api.routes.inference import forget_ref
from service.db import models as model_repo
from service.schemas.common import ERROR_RESPONSES
from service.schemas.models import ModelOut, ModelPage, model_out
from service.storage import model_prefix

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.get("", response_model=ModelPage)
def list_models(
    session: SessionDep,
    name: str | None = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> ModelPage:
    """Models, newest first; filter by `name` (all its versions) or `kind`."""
    models, next_cursor = model_repo.list_page(
        session, name=name, kind=kind, limit=limit, cursor=cursor
    )
    return ModelPage(items=[model_out(m) for m in models], next_cursor=next_cursor)


@router.get("/{ref}", response_model=ModelOut)
def get_model(ref: str, session: SessionDep) -> ModelOut:
    """`ref` is the model's id, its name (the latest version) or `name@version`."""
    return model_out(model_repo.resolve(session, ref))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(ref: str, request: Request, session: SessionDep, store: StoreDep) -> Response:
    """Remove the model's row and every stored file of it."""
    with session.begin():
        model = model_repo.resolve(session, ref)
        # Files first: if that fails the row stays, and deleting again finishes the job.
        store.delete_prefix(model_prefix(model.id))
        model_repo.delete(session, model=model)
    cache = getattr(request.app.state, "model_cache", None)
    if cache is not None:
        cache.discard(model.id)
    forget_ref(request, model.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
