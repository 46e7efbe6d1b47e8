"""The model registry on the service's side: deleting a model everywhere it lives."""

from __future__ import annotations

import shutil

from sqlalchemy.orm import Session

from service.config import Settings
from service.db import models as model_repo
from service.db.tenancy import Scope
from service.inference import ModelCache, cache_folder
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
