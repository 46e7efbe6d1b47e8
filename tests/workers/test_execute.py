"""The worker's side of a job: claim, heartbeat lease, takeover, cancel, limits, failures."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from sqlalchemy import update

from ml.core import registry
from ml.core.reporting import JobFailed, Reporter, RunOutcome
from ml.core.spec import JobSpec, StrictModel
from service import jobs as lifecycle
from service.config import Settings
from service.db import metrics as metric_repo
from service.db.base import new_id, utcnow
from service.db.tables import Job
from service.db.tenancy import EVERYONE
from workers import runtime
from workers.execute import execute


class ProbeParams(StrictModel):
    steps: int = 5
    sleep: float = 0.0
    fail_at: int | None = None
    diverge_at: int | None = None
    result_value: float = 1.0


class ProbeSpec(JobSpec):
    kind: Literal["probe"]
    params: ProbeParams = ProbeParams()


started = threading.Event()


def run_probe(spec: ProbeSpec, reporter: Reporter, context: object = None) -> RunOutcome:
    p = spec.params
    for step in range(p.steps):
        started.set()
        if p.fail_at == step:
            raise RuntimeError("boom")
        if p.diverge_at == step:
            raise JobFailed("diverged", f"loss became NaN at step {step}")
        reporter.metrics(step, {"value": float(step)})
        reporter.progress((step + 1) / p.steps, step=step)
        time.sleep(p.sleep)
    return RunOutcome(result={"value": p.result_value, "nan": float("nan")})


@pytest.fixture
def probe() -> Iterator[None]:
    registry.register_kind(name="probe", spec=ProbeSpec, summary="test", category="simulation")(
        run_probe
    )
    started.clear()
    yield
    registry._KINDS.pop("probe", None)


def make_job(params: dict[str, Any] | None = None, kind: str = "probe", priority: int = 5) -> str:
    job_id = new_id()
    with runtime.sessions().begin() as session:
        spec = JobSpec.model_construct(kind=kind, name="t", priority=priority)
        job = lifecycle.create(session, spec, job_id)
        job.spec = {"kind": kind, "params": params or {}}  # as stored, valid or not
    return job_id


def read(job_id: str) -> Job:
    with runtime.sessions()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def points(job_id: str) -> list[int]:
    with runtime.sessions()() as session:
        return metric_repo.read_series(session, job_id=job_id)["value"]["steps"]  # type: ignore[return-value]


def test_success_records_result_metrics_and_progress(settings: Settings, probe: None) -> None:
    job_id = make_job({"steps": 4})
    assert execute(job_id, worker="w1") == "succeeded"
    job = read(job_id)
    assert job.status == "succeeded" and job.attempts == 1 and job.worker == "w1"
    assert job.result == {"value": 1.0, "nan": None}  # non-finite values become null
    assert job.progress["fraction"] == 1.0
    assert points(job_id) == [0, 1, 2, 3]


def test_a_second_delivery_of_a_live_job_does_nothing(settings: Settings, probe: None) -> None:
    job_id = make_job({"steps": 3})
    with runtime.sessions().begin() as session:
        assert lifecycle.claim(session, job_id=job_id, worker="alive", lease_s=60, max_attempts=3)
    assert execute(job_id, worker="duplicate") is None
    job = read(job_id)
    assert job.status == "running" and job.worker == "alive" and job.attempts == 1


def test_an_expired_lease_is_taken_over(settings: Settings, probe: None) -> None:
    job_id = make_job({"steps": 3})
    with runtime.sessions().begin() as session:
        lifecycle.claim(session, job_id=job_id, worker="dead", lease_s=60, max_attempts=3)
        old = utcnow() - dt.timedelta(seconds=settings.job_lease + 1)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=old))
    assert execute(job_id, worker="rescuer") == "succeeded"
    job = read(job_id)
    assert job.attempts == 2 and job.worker == "rescuer"


def test_the_old_owner_cannot_finish_a_taken_over_job(settings: Settings, probe: None) -> None:
    job_id = make_job()
    with runtime.sessions().begin() as session:
        first = lifecycle.claim(session, job_id=job_id, worker="a", lease_s=60, max_attempts=3)
        session.execute(update(Job).values(heartbeat_at=utcnow() - dt.timedelta(hours=1)))
        second = lifecycle.claim(session, job_id=job_id, worker="b", lease_s=60, max_attempts=3)
    assert (first, second) == (1, 2)
    with runtime.sessions().begin() as session:
        assert not lifecycle.finish(session, job_id=job_id, attempt=1, status="failed")
        assert lifecycle.finish(session, job_id=job_id, attempt=2, status="succeeded")


def test_max_attempts_fails_with_worker_lost(settings: Settings, probe: None) -> None:
    job_id = make_job()
    stale = utcnow() - dt.timedelta(hours=1)
    with runtime.sessions().begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="running", attempts=settings.max_attempts, heartbeat_at=stale)
        )
    assert execute(job_id, worker="w") is None
    job = read(job_id)
    assert job.status == "failed" and job.error_code == "worker_lost"


def test_cancel_while_running_stops_at_the_next_report(settings: Settings, probe: None) -> None:
    job_id = make_job({"steps": 200, "sleep": 0.02})
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(s=execute(job_id, worker="w")))
    thread.start()
    assert started.wait(10)
    time.sleep(0.6)
    with runtime.sessions().begin() as session:
        assert lifecycle.cancel(session, job_id=job_id, scope=EVERYONE).status == "running"
    thread.join(20)
    assert outcome["s"] == "cancelled"
    job = read(job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    recorded = points(job_id)
    assert 0 < len(recorded) < 200
    assert recorded == list(range(len(recorded)))  # history kept, no gaps


def test_time_limit_fails_the_job(settings: Settings, probe: None, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(settings, "job_time_limit", 0.3)
    job_id = make_job({"steps": 100, "sleep": 0.05})
    assert execute(job_id, worker="w") == "failed"
    job = read(job_id)
    assert job.error_code == "time_limit" and "0.3" in (job.error_message or "")
    assert len(points(job_id)) >= 1


def test_an_exception_fails_with_internal_and_keeps_history(
    settings: Settings, probe: None
) -> None:
    job_id = make_job({"steps": 5, "fail_at": 3})
    assert execute(job_id, worker="w") == "failed"
    job = read(job_id)
    assert job.error_code == "internal" and "boom" in (job.error_message or "")
    assert points(job_id) == [0, 1, 2]


def test_a_job_failure_code_is_kept(settings: Settings, probe: None) -> None:
    job_id = make_job({"steps": 5, "diverge_at": 2})
    execute(job_id, worker="w")
    job = read(job_id)
    assert (job.error_code, job.error_message) == ("diverged", "loss became NaN at step 2")


def test_a_spec_that_no_longer_validates_is_invalid_data(settings: Settings, probe: None) -> None:
    job_id = make_job({"steps": "many"})
    execute(job_id, worker="w")
    assert read(job_id).error_code == "invalid_data"
    gone = make_job(kind="vanished")
    execute(gone, worker="w")
    job = read(gone)
    assert job.error_code == "invalid_data" and "known kinds" in (job.error_message or "")


def test_metric_upsert_overwrites_a_rerun_step(settings: Settings, probe: None) -> None:
    job_id = make_job()
    with runtime.sessions().begin() as session:
        metric_repo.upsert(session, job_id=job_id, points=[("x", 1, 1.0), ("x", 2, 2.0)])
    with runtime.sessions().begin() as session:
        metric_repo.upsert(session, job_id=job_id, points=[("x", 2, 5.0), ("x", 3, float("inf"))])
    with runtime.sessions()() as session:
        series = metric_repo.read_series(session, job_id=job_id)["x"]
    assert series == {"steps": [1, 2, 3], "values": [1.0, 5.0, None]}
