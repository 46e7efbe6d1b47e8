"""What a job reads from and writes to the artifact store: its data set, checkpoints, its model.

Keys come from ids only: `jobs/<job_id>/checkpoints/<generation>/<file>` and
`models/<model_id>/<file>`, where a model's id is derived from its job's id, so a re-run of the
job writes over the same keys instead of leaving orphans. Every file's sha256 is recorded in the
database (the job's `checkpoint` manifest, the model's `files` manifest) and checked on reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ml.core.datasets import DataError, Dataset
from ml.core.reporting import JobFailed, ModelOutcome, RegisteredModel
from service import datasets
from service import jobs as lifecycle
from service.db import jobs as job_reads
from service.db import models as model_repo
from service.db import tenancy
from service.db.base import utcnow
from service.db.tables import Job, Model
from service.jsonsafe import json_safe
from service.storage import (
    ArtifactStore,
    StorageError,
    check_key,
    checkpoint_prefix,
    model_prefix,
)
from workers.reporter import JobLost

log = logging.getLogger("thermoml.worker")
MODEL_NAMESPACE = uuid.UUID("5d0f6a52-34c1-4b0e-9d4e-2f1b7a9c8e61")


def load_dataset(
    sessions: sessionmaker[Session], store: ArtifactStore, ref: str, folder: Path
) -> Dataset:
    """The job's data set; a job failure `invalid_data` saying why when it cannot be used."""
    try:
        return datasets.load(sessions, store, ref, folder)
    except (LookupError, DataError, StorageError) as exc:
        message = str(exc).strip("'\"")
        raise JobFailed("invalid_data", f"data set {ref}: {message}") from exc


def load_models(
    sessions: sessionmaker[Session], store: ArtifactStore, ids: list[str], folder: Path
) -> list[RegisteredModel]:
    """The registered models a job reads (pinned to ids at submit), their files downloaded and
    checked; a job failure `invalid_data` when one was deleted or its files cannot be read."""
    with sessions() as session:
        rows = [session.get(Model, model_id) for model_id in ids]
        found = [
            (
                r.id, r.kind, f"{r.name}@{r.version}", dict(r.files or {}),
                {
                    "input_shape": list(r.input_shape or []),
                    "preprocessing": dict(r.preprocessing or {}),
                    "calibration": dict(r.calibration or {}),
                    "capabilities": list(r.capabilities or []),
                },
            )
            if r is not None
            else None
            for r in rows
        ]  # fmt: skip
    loaded = []
    for i, (model_id, row) in enumerate(zip(ids, found, strict=True)):
        if row is None:
            raise JobFailed("invalid_data", f"model {model_id} was deleted after the job's submit")
        _, kind, name, entries, meta = row
        own = folder / f"m{i}"
        own.mkdir(parents=True, exist_ok=True)
        files = {}
        try:
            for key, entry in entries.items():
                local = own / str(entry["key"]).rsplit("/", 1)[-1]
                store.download(entry["key"], local, sha256=entry["sha256"])
                files[key] = local
        except StorageError as exc:
            raise JobFailed("invalid_data", f"model {name} ({model_id}): {exc}") from exc
        loaded.append(RegisteredModel(model_id, kind, name, files, meta))
    return loaded


class Checkpoints:
    """Mirrors the run's checkpoint folder to the store; the last complete one is restored."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        *,
        job_id: str,
        attempt: int,
        folder: Path,
    ) -> None:
        self.sessions, self.store = sessions, store
        self.job_id, self.attempt, self.folder = job_id, attempt, folder
        self.prefix = checkpoint_prefix(job_id)
        self.generation = 0
        # A first attempt that never saved has nothing stored: ending it costs no listing.
        self.touched = attempt > 1

    def restore(self) -> int:
        """Download the last recorded checkpoint into the folder; the number of files."""
        with self.sessions() as session:
            job = job_reads.get(session, job_id=self.job_id, scope=tenancy.EVERYONE)
            manifest = job.checkpoint
        if not manifest:
            return 0
        self.touched = True
        self.generation = int(manifest.get("generation", 0))
        for relative, entry in manifest.get("files", {}).items():
            self.store.download(
                entry["key"], self.folder / check_key(relative), sha256=entry["sha256"]
            )
        log.info("job %s: restored %d checkpoint files", self.job_id, len(manifest["files"]))
        return len(manifest["files"])

    def save(self) -> None:
        """Store the folder as a new generation, record it, then drop the older ones."""
        self.touched = True
        generation = self.generation + 1
        prefix = f"{self.prefix}/{generation}"
        files = {}
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            relative = path.relative_to(self.folder).as_posix()
            files[relative] = self.store.put_file(path, f"{prefix}/{relative}").manifest_entry()
        manifest = {"generation": generation, "files": files}
        with self.sessions.begin() as session:
            owned = lifecycle.save_checkpoint(
                session, job_id=self.job_id, attempt=self.attempt, manifest=manifest
            )
        if not owned:
            self.store.delete_prefix(prefix)
            raise JobLost(self.job_id)
        self.generation = generation
        for key in self.store.list(self.prefix):
            if not key.startswith(prefix + "/"):
                self.store.delete(key)

    def discard(self) -> None:
        """The job ended: its checkpoints are of no further use."""
        if self.touched:
            self.store.delete_prefix(f"jobs/{self.job_id}")


@dataclass(frozen=True)
class StoredModel:
    id: str
    uri: str
    files: dict[str, dict[str, Any]]
    sha256: str
    outcome: ModelOutcome


def model_id_for(job_id: str) -> str:
    return str(uuid.uuid5(MODEL_NAMESPACE, job_id))


def store_model(store: ArtifactStore, outcome: ModelOutcome, *, model_id: str) -> StoredModel:
    """Upload the model's files under `models/<model_id>/`, named `<logical name><suffixes>`."""
    prefix = model_prefix(model_id)
    files: dict[str, dict[str, Any]] = {}
    try:
        for name, path in sorted(outcome.files.items()):
            path = Path(path)
            if not path.is_file():
                raise ValueError(f"model file {name!r} ({path}) is not a file")
            key = check_key(f"{prefix}/{name}{''.join(path.suffixes)}")
            files[name] = store.put_file(path, key).manifest_entry()
    except BaseException:
        store.delete_prefix(prefix)
        raise
    canonical = json.dumps(files, sort_keys=True, separators=(",", ":")).encode()
    return StoredModel(
        model_id, store.url(prefix), files, hashlib.sha256(canonical).hexdigest(), outcome
    )


def register_model(
    session: Session, stored: StoredModel, *, job_id: str, name: str, kind: str
) -> None:
    """Insert the models row: the next version of the job's name, in the job's tenant."""
    outcome = stored.outcome
    tenant = session.scalar(select(Job.tenant).where(Job.id == job_id)) or tenancy.DEFAULT
    model_repo.create(
        session,
        model_id=stored.id,
        name=name,
        tenant=tenant,
        kind=kind,
        job_id=job_id,
        artifact_uri=stored.uri,
        sha256=stored.sha256,
        files=stored.files,
        input_shape=[int(d) for d in outcome.input_shape],
        preprocessing=json_safe(outcome.preprocessing),
        capabilities=list(outcome.capabilities),
        pictures=list(outcome.pictures),
        calibration=json_safe(outcome.calibration),
        evaluation=json_safe(outcome.evaluation),
        created_at=utcnow(),
    )
