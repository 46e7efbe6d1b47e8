"""The model registry on the service's side: deleting a model everywhere it lives, and
resolving the models a job spec reads at submit."""

from __future__ import annotations

import shutil

from sqlalchemy.orm import Session

from ml.core.spec import JobSpec
from service.config import Settings
from service.db import models as model_repo
from service.db.tenancy import Scope
from service.errors import ServiceError
from service.inference import ModelCache, cache_folder
from service.inputs import refusal
from service.storage import ArtifactStore, model_prefix


def delete(
    session: Session,
    store: ArtifactStore,
    cache: ModelCache | None,
    settings: Settings,
    *,
    ref: str,
    scope: Scope,
) -> None:
    """Remove the model's row and stored files, then forget it in the process's model cache
    and remove its downloaded files, which every API process of the data dir shares (also
    when this process never loaded it)."""
    with session.begin():
        model = model_repo.resolve(session, ref, scope=scope)
        # Files first: if that fails the row stays, and deleting again finishes the job.
        store.delete_prefix(model_prefix(model.id))
        model_repo.delete(session, model=model)
    if cache is not None:
        cache.discard(model.id)
    shutil.rmtree(cache_folder(settings) / model.id, ignore_errors=True)


def pin_refs(session: Session, spec: JobSpec, *, scope: Scope) -> JobSpec:
    """`spec` with the registered models it reads (`JobSpec.model_refs`) resolved for the
    caller and pinned to their ids; a 422 naming the field when one is not the caller's, does
    not serve what the job needs of it, or comes twice."""
    refs = spec.model_refs()
    ids: list[str] = []
    for i, ref in enumerate(refs):
        field = f"body.{spec.MODELS_FIELD}.{i}"
        try:
            model = model_repo.resolve(session, ref, scope=scope)
        except ServiceError as exc:
            if exc.code != "not_found":
                raise
            raise refusal(field, exc.message, "unknown_model") from None
        if spec.MODELS_SERVE not in (model.capabilities or []):
            serves = ", ".join(model.capabilities or []) or "nothing"
            message = f"model {ref!r} ({model.kind}) serves {serves}, not {spec.MODELS_SERVE}"
            raise refusal(field, message, "unsupported_model")
        if model.id in ids:
            message = f"model {ref!r} is also models.{ids.index(model.id)}"
            raise refusal(field, message, "duplicate_model")
        ids.append(model.id)
    return spec.with_models(ids) if ids else spec
