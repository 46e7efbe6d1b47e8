"""The model registry on the service's side: deleting a model everywhere it lives."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.db import models as model_repo
from service.inference import ModelCache
from service.storage import ArtifactStore, model_prefix


def delete(session: Session, store: ArtifactStore, cache: ModelCache | None, *, ref: str) -> None:
    """Remove the model's row and stored files, then forget it in the process's model cache."""
    with session.begin():
        model = model_repo.resolve(session, ref)
        # Files first: if that fails the row stays, and deleting again finishes the job.
        store.delete_prefix(model_prefix(model.id))
        model_repo.delete(session, model=model)
    if cache is not None:
        cache.discard(model.id)
