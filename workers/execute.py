"""Run one job in this process: claim its row, run its kind, record the outcome.

Idempotent: a second delivery of a job whose worker is alive fails to claim it and does nothing.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from ml.core.registry import UnknownKind, get_kind
from ml.core.reporting import JobCancelled, JobFailed, RunContext
from service.config import get_settings
from service.db import jobs as job_repo
from service.db.tables import Job
from service.storage import ArtifactStore, model_prefix
from workers import artifacts, runtime, tensorboard
from workers.reporter import DbReporter, Heartbeat, JobLost

log = logging.getLogger("thermoml.worker")


def finite_json(value: Any) -> Any:
    """Replace non-finite floats by None, recursively (the API sends them as null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


class _NotOwned(Exception):
    """The job's row belongs to another attempt now."""


class DatabaseUnavailable(Exception):
    """The database went away mid-job (a restart, a failover). The job is not ended: its row
    stays as it was, its lease lapses, the reconciler publishes it again and the next attempt
    resumes from the last checkpoint. Failing it would turn a database blip into a lost job."""


def database_unavailable(exc: BaseException) -> bool:
    """A connection-level database error (not a bug in a statement)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


REGISTER_TRIES = 3  # concurrent jobs of one name may race for the next model version


@contextmanager
def _removed_afterwards(path: Path) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def execute(job_id: str, *, worker: str) -> str | None:
    """The job's final status, or None when this delivery did not claim it."""
    settings = get_settings()
    sessions = runtime.sessions()
    try:
        with sessions.begin() as session:
            attempt = job_repo.claim(
                session,
                job_id=job_id,
                worker=worker,
                lease_s=settings.job_lease,
                max_attempts=settings.max_attempts,
            )
    except Exception as exc:
        if database_unavailable(exc):
            raise DatabaseUnavailable(job_id) from exc
        raise
    if attempt is None:
        log.info("job %s not claimed (taken, ended or cancelled)", job_id)
        return None
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        kind_name, spec_data, job_name = job.kind, job.spec, job.name
    log.info("job %s (%s) attempt %d started on %s", job_id, kind_name, attempt, worker)
    reporter = DbReporter(
        sessions,
        job_id=job_id,
        attempt=attempt,
        deadline=time.monotonic() + settings.job_time_limit,
        time_limit=settings.job_time_limit,
    )

    store = ArtifactStore.from_settings(settings)

    def commit_end(status: str, model: artifacts.StoredModel | None, fields: Any) -> bool:
        """Register the model (if any) and end the job in one transaction; False if not ours."""
        for attempt_no in range(REGISTER_TRIES):
            try:
                with sessions.begin() as session:
                    if model is not None:
                        artifacts.register_model(
                            session, model, job_id=job_id, name=job_name, kind=kind_name
                        )
                        fields["model_id"] = model.id
                    job_repo.save_checkpoint(session, job_id=job_id, attempt=attempt, manifest=None)
                    if not job_repo.finish(
                        session, job_id=job_id, attempt=attempt, status=status, **fields
                    ):
                        raise _NotOwned(job_id)
                return True
            except _NotOwned:
                return False
            except IntegrityError:
                if model is None or attempt_no == REGISTER_TRIES - 1:
                    raise
        return False

    def finish(status: str, *, model: artifacts.StoredModel | None = None, **fields: Any) -> str:
        try:
            reporter.flush(check=False)
        except Exception as exc:
            if database_unavailable(exc):  # never end a job whose last points were not written
                raise DatabaseUnavailable(job_id) from exc
            log.exception("job %s: could not write its last metric points", job_id)
        try:
            ended = commit_end(status, model, fields)
        except Exception as exc:
            if database_unavailable(exc):
                raise DatabaseUnavailable(job_id) from exc
            raise
        if ended:
            try:
                checkpoints.discard()
            except Exception:
                log.exception("job %s: could not delete its checkpoints", job_id)
            try:
                tensorboard.write_event_files(job_id, sessions, store)
            except Exception:
                log.exception("job %s: could not write its TensorBoard events", job_id)
        log.info("job %s ended %s", job_id, status)
        return status

    workdir = Path(tempfile.mkdtemp(prefix=f"thermoml-{job_id[:8]}-"))
    context = RunContext(workdir=workdir / "work", checkpoint_dir=workdir / "checkpoints")
    context.workdir.mkdir()
    context.checkpoint_dir.mkdir()
    checkpoints = artifacts.Checkpoints(
        sessions, store, job_id=job_id, attempt=attempt, folder=context.checkpoint_dir
    )
    with (
        Heartbeat(sessions, job_id=job_id, attempt=attempt, every=settings.job_lease / 4),
        _removed_afterwards(workdir),
    ):
        try:
            kind = get_kind(kind_name)
            spec = kind.spec.model_validate(spec_data)
            if spec.dataset:
                context.dataset = artifacts.load_dataset(
                    sessions, store, spec.dataset, workdir / "data"
                )
            checkpoints.restore()
            reporter.on_checkpoint = checkpoints.save
            outcome = kind.run(spec, reporter, context)
        except JobLost:
            log.warning("job %s: another worker took it over; stopping", job_id)
            return None
        except JobCancelled:
            return finish("cancelled", progress=reporter.last_progress)
        except JobFailed as exc:
            return finish("failed", error_code=exc.code, error_message=exc.message)
        except (UnknownKind, ValidationError) as exc:
            return finish("failed", error_code="invalid_data", error_message=str(exc))
        except Exception as exc:
            if database_unavailable(exc):
                raise DatabaseUnavailable(job_id) from exc
            log.exception("job %s failed", job_id)
            return finish(
                "failed", error_code="internal", error_message=f"{type(exc).__name__}: {exc}"
            )
        progress = {**(reporter.last_progress or {}), "fraction": 1.0}
        stored = None
        if outcome.model is not None:
            try:
                model_id = artifacts.model_id_for(job_id)
                stored = artifacts.store_model(store, outcome.model, model_id=model_id)
            except Exception as exc:
                log.exception("job %s: could not store its model", job_id)
                return finish(
                    "failed",
                    error_code="internal",
                    error_message=f"could not store the model: {exc}",
                )
        try:
            return finish(
                "succeeded",
                model=stored,
                result=finite_json(outcome.result),
                device=outcome.device,
                progress=progress,
            )
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if stored is None:
                raise
            log.exception("job %s: could not register its model", job_id)
            store.delete_prefix(model_prefix(stored.id))
            return finish(
                "failed",
                error_code="internal",
                error_message=f"could not register the model: {exc}",
            )
