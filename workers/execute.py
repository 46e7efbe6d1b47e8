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

from ml.registry import UnknownKind, get_kind
from ml.reporting import JobCancelled, JobFailed, RunContext
from service.config import get_settings
from service.db import jobs as job_repo
from service.db.tables import Job
from workers import runtime
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
    with sessions.begin() as session:
        attempt = job_repo.claim(
            session,
            job_id=job_id,
            worker=worker,
            lease_s=settings.job_lease,
            max_attempts=settings.max_attempts,
        )
    if attempt is None:
        log.info("job %s not claimed (taken, ended or cancelled)", job_id)
        return None
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        kind_name, spec_data = job.kind, job.spec
    log.info("job %s (%s) attempt %d started on %s", job_id, kind_name, attempt, worker)
    reporter = DbReporter(
        sessions,
        job_id=job_id,
        attempt=attempt,
        deadline=time.monotonic() + settings.job_time_limit,
        time_limit=settings.job_time_limit,
    )

    def finish(status: str, **fields: Any) -> str:
        try:
            reporter.flush(check=False)
        except Exception:
            log.exception("job %s: could not write its last metric points", job_id)
        with sessions.begin() as session:
            job_repo.finish(session, job_id=job_id, attempt=attempt, status=status, **fields)
        log.info("job %s ended %s", job_id, status)
        return status

    workdir = Path(tempfile.mkdtemp(prefix=f"thermoml-{job_id[:8]}-"))
    context = RunContext(workdir=workdir / "work", checkpoint_dir=workdir / "checkpoints")
    context.workdir.mkdir()
    context.checkpoint_dir.mkdir()
    with (
        Heartbeat(sessions, job_id=job_id, attempt=attempt, every=settings.job_lease / 4),
        _removed_afterwards(workdir),
    ):
        try:
            kind = get_kind(kind_name)
            spec = kind.spec.model_validate(spec_data)
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
            log.exception("job %s failed", job_id)
            return finish(
                "failed", error_code="internal", error_message=f"{type(exc).__name__}: {exc}"
            )
        progress = {**(reporter.last_progress or {}), "fraction": 1.0}
        return finish(
            "succeeded",
            result=finite_json(outcome.result),
            device=outcome.device,
            progress=progress,
        )
