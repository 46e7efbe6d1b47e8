"""Run one job in this process: claim its row, run its kind, record the outcome.

Idempotent: a second delivery of a job whose worker is alive fails to claim it and does nothing.
The steps, in order: `claim` -> `JobRun.start` (read the row, make the folders, the reporter and
the checkpoints) -> `JobRun.run_kind` (load the data set, restore, run) -> `JobRun.succeed`
(store the model) or `JobRun.end` with the failure -> `JobRun.clean_up`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ml.core.registry import UnknownKind, get_kind
from ml.core.reporting import JobCancelled, JobFailed, RunContext, RunOutcome
from service import jobs as lifecycle
from service.config import Settings, get_settings
from service.db import jobs as job_reads
from service.db.tenancy import EVERYONE
from service.jsonsafe import json_safe
from service.storage import ArtifactStore, model_prefix
from workers import artifacts, runtime, tensorboard
from workers.reporter import DbReporter, Heartbeat, JobLost

log = logging.getLogger("thermoml.worker")
REGISTER_TRIES = 3  # concurrent jobs of one name may race for the next model version


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


def out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: MemoryError, or TensorFlow's ResourceExhaustedError (told by its
    name, so that this module does not import TensorFlow)."""
    if isinstance(exc, MemoryError):
        return True
    return any(t.__name__ == "ResourceExhaustedError" for t in type(exc).__mro__)


def execute(job_id: str, *, worker: str) -> str | None:
    """The job's final status, or None when this delivery did not claim it (or lost it)."""
    settings = get_settings()
    attempt = claim(job_id, worker=worker, settings=settings)
    if attempt is None:
        log.info("job %s not claimed (taken, ended or cancelled)", job_id)
        return None
    run = JobRun.start(job_id, attempt=attempt, worker=worker, settings=settings)
    try:
        with Heartbeat(run.sessions, job_id=job_id, attempt=attempt, every=settings.job_lease / 4):
            return run.outcome()
    finally:
        run.clean_up()


def claim(job_id: str, *, worker: str, settings: Settings) -> int | None:
    """The attempt number when this delivery takes the job."""
    try:
        with runtime.sessions().begin() as session:
            return lifecycle.claim(
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


@dataclass
class JobRun:
    """One attempt at one job, from its claim to its end."""

    job_id: str
    attempt: int
    kind_name: str
    job_name: str
    spec_data: dict[str, Any]
    sessions: sessionmaker[Session]
    store: ArtifactStore
    reporter: DbReporter
    context: RunContext
    checkpoints: artifacts.Checkpoints
    events: tensorboard.EventWriter
    folder: Path

    @classmethod
    def start(cls, job_id: str, *, attempt: int, worker: str, settings: Settings) -> JobRun:
        """Read the claimed row; make the attempt's folders, reporter and checkpoints."""
        sessions = runtime.sessions()
        with sessions() as session:
            job = job_reads.get(session, job_id=job_id, scope=EVERYONE)
            kind_name, spec_data, job_name = job.kind, job.spec, job.name
        log.info("job %s (%s) attempt %d started on %s", job_id, kind_name, attempt, worker)
        store = ArtifactStore.from_settings(settings)
        folder = runtime.work_folder(job_id, os.getpid())
        context = RunContext(workdir=folder / "work", checkpoint_dir=folder / "checkpoints")
        reporter = DbReporter(
            sessions,
            job_id=job_id,
            attempt=attempt,
            deadline=time.monotonic() + settings.job_time_limit,
            time_limit=settings.job_time_limit,
        )
        checkpoints = artifacts.Checkpoints(
            sessions, store, job_id=job_id, attempt=attempt, folder=context.checkpoint_dir
        )
        events = tensorboard.EventWriter(
            job_id, attempt=attempt, sessions=sessions, target=store, staging=folder / "tensorboard"
        )
        reporter.on_points = events.write
        # The folders last: nothing that can fail comes between making them and the clean-up.
        runtime.remove_abandoned_work(job_id)
        shutil.rmtree(folder, ignore_errors=True)
        context.workdir.mkdir(parents=True)
        context.checkpoint_dir.mkdir()
        return cls(
            job_id, attempt, kind_name, job_name, spec_data, sessions, store, reporter, context,
            checkpoints, events, folder,
        )  # fmt: skip

    def outcome(self) -> str | None:
        """Run the kind and end the job as its outcome says; None when another attempt owns it."""
        try:
            outcome = self.run_kind()
        except JobLost:
            log.warning("job %s: another worker took it over; stopping", self.job_id)
            return None
        except JobCancelled:
            return self.end("cancelled", progress=self.reporter.last_progress)
        except JobFailed as exc:
            return self.end("failed", error_code=exc.code, error_message=exc.message)
        except (UnknownKind, ValidationError) as exc:
            return self.end("failed", error_code="invalid_data", error_message=str(exc))
        except Exception as exc:
            if database_unavailable(exc):
                raise DatabaseUnavailable(self.job_id) from exc
            if out_of_memory(exc):
                log.warning("job %s ran out of memory: %s", self.job_id, exc)
                message = f"the job ran out of memory ({type(exc).__name__}: {exc})"
                return self.end("failed", error_code="out_of_memory", error_message=message[:2000])
            log.exception("job %s failed", self.job_id)
            return self.end(
                "failed", error_code="internal", error_message=f"{type(exc).__name__}: {exc}"
            )
        return self.succeed(outcome)

    def run_kind(self) -> RunOutcome:
        """Validate the stored spec, fetch the data set, restore the last checkpoint, run."""
        kind = get_kind(self.kind_name)
        spec = kind.spec.model_validate(self.spec_data)
        if spec.dataset:
            self.context.dataset = artifacts.load_dataset(
                self.sessions, self.store, spec.dataset, self.folder / "data"
            )
        if spec.model_refs():
            self.context.models = artifacts.load_models(
                self.sessions, self.store, spec.model_refs(), self.folder / "models"
            )
        self.checkpoints.restore()
        self.reporter.on_checkpoint = self.checkpoints.save
        return kind.run(spec, self.reporter, self.context)

    def succeed(self, outcome: RunOutcome) -> str:
        """Store the model (if any), then register it and end the job in one transaction."""
        progress = {**(self.reporter.last_progress or {}), "fraction": 1.0}
        stored = None
        if outcome.model is not None:
            try:
                model_id = artifacts.model_id_for(self.job_id)
                stored = artifacts.store_model(self.store, outcome.model, model_id=model_id)
            except Exception as exc:
                log.exception("job %s: could not store its model", self.job_id)
                message = f"could not store the model: {exc}"
                return self.end("failed", error_code="internal", error_message=message)
        try:
            return self.end(
                "succeeded",
                model=stored,
                result=json_safe(outcome.result),
                device=outcome.device,
                progress=progress,
            )
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if stored is None:
                raise
            log.exception("job %s: could not register its model", self.job_id)
            self.store.delete_prefix(model_prefix(stored.id))
            message = f"could not register the model: {exc}"
            return self.end("failed", error_code="internal", error_message=message)

    def end(self, status: str, *, model: artifacts.StoredModel | None = None, **fields: Any) -> str:
        """Write the last points, end the job; then drop its checkpoints, finish its event file."""
        try:
            self.reporter.flush(check=False)
        except Exception as exc:
            if database_unavailable(exc):  # never end a job whose last points were not written
                raise DatabaseUnavailable(self.job_id) from exc
            log.exception("job %s: could not write its last metric points", self.job_id)
        try:
            ended = self._commit_end(status, model, fields)
        except Exception as exc:
            if database_unavailable(exc):
                raise DatabaseUnavailable(self.job_id) from exc
            raise
        if ended:
            self._after_end()
        log.info("job %s ended %s", self.job_id, status)
        return status

    def _commit_end(
        self, status: str, model: artifacts.StoredModel | None, fields: dict[str, Any]
    ) -> bool:
        """Register the model (if any) and end the job in one transaction; False if not ours."""
        for try_no in range(REGISTER_TRIES):
            try:
                with self.sessions.begin() as session:
                    if model is not None:
                        artifacts.register_model(
                            session, model, job_id=self.job_id, name=self.job_name,
                            kind=self.kind_name,
                        )  # fmt: skip
                        fields["model_id"] = model.id
                    owned = lifecycle.finish(
                        session, job_id=self.job_id, attempt=self.attempt, status=status, **fields
                    )
                    if not owned:
                        raise _NotOwned(self.job_id)
                return True
            except _NotOwned:
                return False
            except IntegrityError:
                if model is None or try_no == REGISTER_TRIES - 1:
                    raise
        return False

    def _after_end(self) -> None:
        try:
            self.checkpoints.discard()
        except Exception:
            log.exception("job %s: could not delete its checkpoints", self.job_id)
        try:
            self.events.finish()
        except Exception:
            log.exception("job %s: could not write its TensorBoard events", self.job_id)

    def clean_up(self) -> None:
        self.events.close()  # uploads what an attempt that did not end the job wrote
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # the job's folder, once no attempt uses it
            self.folder.parent.rmdir()
