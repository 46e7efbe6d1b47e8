"""Nothing left behind: deleting a model removes its downloaded files from the data dir's model
cache even in an API process that never loaded it (the processes of a data dir share it)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.config import Settings
from service.db import models as model_repo
from service.db.base import new_id, utcnow
from service.inference import cache_folder


def test_deleting_a_model_removes_its_cached_files_in_a_process_that_never_loaded_it(
    client: TestClient, settings: Settings
) -> None:
    model_id = new_id()
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        model_repo.create(
            session,
            model_id=model_id,
            name="cached-elsewhere",
            tenant="default",
            kind="autoencoder",
            job_id=None,
            artifact_uri="file:///nowhere",
            sha256="0" * 64,
            capabilities=["score"],
            created_at=utcnow(),
        )
    # Another API process of this data dir downloaded it; this one never loaded a model.
    downloaded = cache_folder(settings) / model_id / "0123456789abcdef"
    downloaded.mkdir(parents=True)
    (downloaded / "model.keras").write_bytes(b"weights" * 1000)
    assert getattr(client.app.state, "model_cache", None) is None
    assert client.delete(f"/v1/models/{model_id}").status_code == 204
    assert not (cache_folder(settings) / model_id).exists()
    assert client.get(f"/v1/models/{model_id}").status_code == 404
