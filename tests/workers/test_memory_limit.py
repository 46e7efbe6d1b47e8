"""A job process has a memory limit (THERMOML_JOB_MEMORY_BYTES): the pool process watches its
resident memory and kills it past the limit; the job fails as `out_of_memory`, is not queued
again, and is never `internal`. A MemoryError or TensorFlow's ResourceExhaustedError inside a
job ends it the same way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pytest

from ml.core import registry
from ml.core.reporting import Reporter, RunOutcome
from ml.core.spec import JobSpec, StrictModel
from service.config import Settings
from tests.abuse.helpers import rss
from tests.workers.test_execute import make_job, read
from workers.isolation import run_isolated

HEADROOM = 256 << 20  # above the forked process's own resident memory
CHUNK = 32 << 20


class ResourceExhaustedError(Exception):
    """Named as TensorFlow's (tf.errors.ResourceExhaustedError), without importing it."""


class HungryParams(StrictModel):
    allocate: int = 0  # bytes, touched a chunk at a time
    raise_error: Literal["none", "memory", "resource_exhausted"] = "none"


class HungrySpec(JobSpec):
    kind: Literal["hungry"]
    params: HungryParams = HungryParams()


def run_hungry(spec: HungrySpec, reporter: Reporter, context: Any = None) -> RunOutcome:
    p = spec.params
    if p.raise_error == "memory":
        raise MemoryError("cannot allocate 1 TiB")
    if p.raise_error == "resource_exhausted":
        raise ResourceExhaustedError("OOM when allocating tensor with shape[65536,65536]")
    held = []
    for _ in range(p.allocate // CHUNK):
        held.append(np.ones(CHUNK, dtype=np.uint8))
        time.sleep(0.02)  # the watcher reads every 0.05 s here
    time.sleep(0.5)
    return RunOutcome(result={"held": sum(a.nbytes for a in held)})


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> int:
    """Set before `settings` reads the environment."""
    value = rss() + HEADROOM
    monkeypatch.setenv("THERMOML_JOB_MEMORY_BYTES", str(value))
    monkeypatch.setenv("THERMOML_MEMORY_POLL_INTERVAL", "0.05")
    return value


@pytest.fixture
def hungry(limit: int, settings: Settings) -> Iterator[int]:
    assert settings.job_memory_bytes == limit
    registry.register_kind(name="hungry", spec=HungrySpec, summary="test", category="simulation")(
        run_hungry
    )
    yield limit
    registry._KINDS.pop("hungry", None)


def test_a_job_past_its_memory_limit_fails_as_out_of_memory(hungry: int) -> None:
    job_id = make_job({"allocate": 4 * HEADROOM}, kind="hungry")
    started = time.monotonic()
    run_isolated(job_id, worker="w", time_limit=60)
    job = read(job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "out_of_memory", 1)
    assert "THERMOML_JOB_MEMORY_BYTES" in (job.error_message or "")
    assert str(hungry) in (job.error_message or "")
    assert time.monotonic() - started < 30


def test_a_job_under_its_limit_is_left_alone(hungry: int) -> None:
    job_id = make_job({"allocate": HEADROOM // 4}, kind="hungry")
    run_isolated(job_id, worker="w", time_limit=60)
    job = read(job_id)
    assert job.status == "succeeded", job.error_message
    assert job.result == {"held": HEADROOM // 4 // CHUNK * CHUNK}


@pytest.mark.parametrize("error", ["memory", "resource_exhausted"])
def test_a_failed_allocation_inside_a_job_is_out_of_memory(hungry: int, error: str) -> None:
    job_id = make_job({"raise_error": error}, kind="hungry")
    run_isolated(job_id, worker="w", time_limit=60)
    job = read(job_id)
    assert (job.status, job.error_code) == ("failed", "out_of_memory")
    assert "ran out of memory" in (job.error_message or "")
