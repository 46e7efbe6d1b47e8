"""Each job runs in its own forked process; a killed job process is queued again, bounded."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from ml.core import registry
from ml.core.reporting import Reporter, RunOutcome
from ml.core.spec import JobSpec, StrictModel
from service.config import Settings
from tests.conftest import RecordingPublisher
from tests.workers.test_execute import make_job, read
from workers import runtime
from workers.isolation import run_isolated


class KillParams(StrictModel):
    die_on_attempts: list[int] = Field(default_factory=lambda: [1])
    raise_instead: bool = False
    note_workdir: str | None = None  # a file to write the attempt's work folder's path into


class KillSpec(JobSpec):
    kind: Literal["suicidal"]
    params: KillParams = KillParams()


def run_suicidal(spec: KillSpec, reporter: Reporter, context: Any = None) -> RunOutcome:
    reporter.metrics(0, {"pid": float(os.getpid())})
    if spec.params.note_workdir:
        (context.workdir / "weights.bin").write_bytes(b"w" * 1_000_000)
        Path(spec.params.note_workdir).write_text(str(context.workdir))
    from workers.reporter import DbReporter

    attempt = reporter.attempt if isinstance(reporter, DbReporter) else 1
    if attempt in spec.params.die_on_attempts:
        reporter.flush()  # type: ignore[attr-defined]
        if spec.params.raise_instead:
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    return RunOutcome(result={"attempt": attempt})


@pytest.fixture
def suicidal() -> Iterator[None]:
    registry.register_kind(name="suicidal", spec=KillSpec, summary="test", category="simulation")(
        run_suicidal
    )
    yield
    registry._KINDS.pop("suicidal", None)


def test_job_runs_in_another_process(settings: Settings, suicidal: None) -> None:
    job_id = make_job({"die_on_attempts": []}, kind="suicidal")
    run_isolated(job_id, worker="w", time_limit=60)
    job = read(job_id)
    assert job.status == "succeeded"
    from service.db import metrics as metric_repo
    from workers import runtime

    with runtime.sessions()() as session:
        pid = metric_repo.read_series(session, job_id=job_id)["pid"]["values"][0]
    assert pid != os.getpid()


def test_a_killed_job_process_is_queued_again_and_then_succeeds(
    settings: Settings, suicidal: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = RecordingPublisher(run_inline=False)  # the real broker: tests/integration
    monkeypatch.setattr(runtime, "publisher", lambda: broker)
    job_id = make_job({"die_on_attempts": [1]}, kind="suicidal", priority=7)
    run_isolated(job_id, worker="w", time_limit=60)
    job = read(job_id)
    assert (job.status, job.attempts, job.worker) == ("queued", 1, None)
    assert job.published_at is not None  # published again, at its queue and priority
    assert broker.published == [(job_id, "cpu", 7)]
    run_isolated(job_id, worker="w", time_limit=60)
    job = read(job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert job.result == {"attempt": 2}


def test_killed_on_every_attempt_fails_as_worker_lost(settings: Settings, suicidal: None) -> None:
    job_id = make_job({"die_on_attempts": [1, 2, 3]}, kind="suicidal")
    for _ in range(settings.max_attempts):
        run_isolated(job_id, worker="w", time_limit=60)
    job = read(job_id)
    assert job.status == "failed" and job.error_code == "worker_lost"
    assert str(settings.max_attempts) in (job.error_message or "")


def test_a_process_that_exits_with_an_error_fails_the_job(
    settings: Settings, suicidal: None
) -> None:
    job_id = make_job({"die_on_attempts": [1], "raise_instead": True}, kind="suicidal")
    run_isolated(job_id, worker="w", time_limit=60)
    job = read(job_id)
    assert job.status == "failed" and job.error_code == "internal"


def test_an_attempt_leaves_no_files_behind_even_killed(
    settings: Settings, suicidal: None, tmp_path: Path
) -> None:
    note = tmp_path / "workdir.txt"
    job_id = make_job({"die_on_attempts": [1], "note_workdir": str(note)}, kind="suicidal")
    run_isolated(job_id, worker="w", time_limit=60)
    assert read(job_id).status == "queued"
    workdir = Path(note.read_text())
    assert workdir.is_relative_to(settings.data_dir.resolve() / "work" / job_id)
    assert not workdir.exists()
    run_isolated(job_id, worker="w", time_limit=60)  # the retry, which ends the job
    assert read(job_id).status == "succeeded"
    assert list((settings.data_dir / "work").iterdir()) == []
