"""With model processes on (`THERMOML_INFERENCE_PROCESSES`), heavy model work runs in one
(`service.offload`), not on the API's threads: the answers are the ones the API would compute,
refusals keep their status, a process that dies or hangs costs its request a 503 (never a 500)
and the next request gets a new process, a deadline stops the work sent to it, and a deleted
model leaves it.

The model is `Echo` (tests/abuse/offload_kinds.py): it sleeps a fixed time per sample and logs
each call with its process id, so where each chunk ran is known.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ml.core import registry
from ml.core.spec import JobSpec
from service import chunks, offload
from service.config import Settings
from service.db import models as model_repo
from service.db.base import new_id
from service.errors import ServiceError
from service.main import create_app
from service.offload_child import portable
from tests.abuse.helpers import assert_error, assert_still_serving
from tests.abuse.offload_kinds import DIE_SEED, HANG_SEED, Echo, calls
from tests.conftest import RecordingPublisher

SECONDS_PER_ROW = 0.002
# More samples than one chunk, and (at SECONDS_PER_ROW) more than a heavy request's second.
HEAVY_N = 2 * chunks.GENERATE_CHUNK + 100
# One chunk, so its seed reaches the model as given (DIE_SEED, HANG_SEED): heavy when priced
# at twice its cost.
ONE_CHUNK_N = chunks.GENERATE_CHUNK - 12


class EchoSpec(JobSpec):
    kind: Literal["echo"]


@pytest.fixture
def echo() -> Iterator[None]:
    registry.register_kind(
        name="echo",
        spec=EchoSpec,
        summary="test model that logs where it runs",
        category="model",
        serves=frozenset({"score", "generate"}),
        load=Echo,
    )(lambda *_: None)  # type: ignore[arg-type]
    yield
    registry._KINDS.pop("echo", None)


class Served:
    """A client of an app with one or more `echo` models, and the log of their calls."""

    def __init__(
        self,
        settings: Settings,
        log: Path,
        names: tuple[str, ...],
        child_load_seconds: float = 0.0,
        **update: Any,
    ):
        self.app = create_app(settings.model_copy(update=update), reconcile=False)
        self.app.state.publisher = RecordingPublisher()
        self.log = log
        self.ids: dict[str, str] = {}
        with self.app.state.sessions.begin() as session:
            for name in names:
                self.ids[name] = model_repo.create(
                    session,
                    model_id=new_id(),
                    name=name,
                    kind="echo",
                    artifact_uri="file:///nowhere",
                    sha256="0" * 64,
                    input_shape=[2],
                    capabilities=["score", "generate"],
                    calibration={
                        "log": str(log),
                        "seconds_per_row": SECONDS_PER_ROW,
                        "test_pid": os.getpid(),
                        "child_load_seconds": child_load_seconds,
                    },
                    files={},
                ).id
        self.client = TestClient(self.app)

    def generate(self, name: str = "echo", **body: Any) -> Any:
        return self.client.post(f"/v1/models/{name}/generate", json=body)

    def prime(self, name: str = "echo", seconds_per_row: float = SECONDS_PER_ROW) -> None:
        """The model loaded in the API (one light request) and its generate measured, so that
        the next heavy request is priced from its start."""
        assert self.generate(name, n=1).status_code == 200
        gate = self.app.state.model_cache.admission.gate(f"{self.ids[name]}:{'0' * 64}")
        gate.estimate("generate").per_unit = seconds_per_row

    def processes(self) -> offload.ModelProcesses:
        found = self.app.state.model_cache.processes
        assert isinstance(found, offload.ModelProcesses)
        return found

    def close(self) -> None:
        cache = getattr(self.app.state, "model_cache", None)
        if cache is not None and cache.processes is not None:
            cache.processes.close()


@pytest.fixture
def served(settings: Settings, echo: None, tmp_path: Path) -> Iterator[Served]:
    made = Served(settings, tmp_path / "calls.log", ("echo", "other"), inference_processes=1)
    with made.client:
        yield made
    made.close()


def where(log: Path, since: int = 0) -> list[str]:
    """'api' or 'child' for each generate call logged after the first `since` calls."""
    return [
        "api" if pid == os.getpid() else "child"
        for pid, operation, _ in calls(log)[since:]
        if operation == "generate"
    ]


def test_heavy_work_moves_to_a_model_process_and_answers_as_the_api_would(
    served: Served, settings: Settings, tmp_path: Path
) -> None:
    answer = served.generate(n=HEAVY_N, seed=5)
    assert answer.status_code == 200, answer.text
    # The first chunk measures the work (on the API's threads); it is heavy: the rest moves.
    assert where(served.log) == ["api", "child", "child"]
    [child] = served.processes().pids()
    assert os.getpriority(os.PRIO_PROCESS, child) >= settings.inference_nice

    again = served.generate(n=HEAVY_N, seed=5)  # priced now: all of it in the process
    assert where(served.log, since=3) == ["child", "child", "child"]
    # The same samples as an API that computes everything on its own threads.
    alone = Served(settings, tmp_path / "alone.log", ("echo",), inference_processes=0)
    with alone.client:
        reference = alone.generate(n=HEAVY_N, seed=5)
    assert set(where(alone.log)) == {"api"}
    for got in (answer, again):
        np.testing.assert_array_equal(got.json()["samples"], reference.json()["samples"])


def test_light_work_stays_in_the_api(served: Served) -> None:
    for _ in range(3):
        assert served.generate(n=10, seed=1).status_code == 200
    assert set(where(served.log)) == {"api"}
    assert served.processes().pids() == []  # none was started


def test_refused_options_keep_their_status_from_a_model_process(served: Served) -> None:
    served.prime()
    refused = served.generate(n=HEAVY_N, seed=1, sampler="refused")
    assert_error(refused, 422, "validation_error")
    assert "refused" in refused.json()["error"]["message"]
    assert where(served.log)[-1] == "child"


def test_a_model_process_that_dies_answers_503_and_the_next_request_gets_a_new_one(
    served: Served,
) -> None:
    served.prime(seconds_per_row=2 * SECONDS_PER_ROW)
    assert served.generate(n=HEAVY_N, seed=1).status_code == 200
    [first] = served.processes().pids()
    died = served.generate(n=ONE_CHUNK_N, seed=DIE_SEED)
    assert_error(died, 503, "unavailable")
    assert int(died.headers["Retry-After"]) >= 1
    assert_still_serving(served.client)
    after = served.generate(n=HEAVY_N, seed=1)
    assert after.status_code == 200, after.text
    [second] = served.processes().pids()
    assert second != first
    assert where(served.log)[-3:] == ["child"] * 3


def test_a_model_process_past_its_deadline_is_killed_and_replaced(
    settings: Settings, echo: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offload, "CALL_GRACE_S", 0.5)
    served = Served(
        settings, tmp_path / "calls.log", ("echo",), inference_processes=1, inference_timeout=4
    )
    try:
        with served.client:
            served.prime(seconds_per_row=2 * SECONDS_PER_ROW)
            started = time.perf_counter()
            answer = served.generate(n=ONE_CHUNK_N, seed=HANG_SEED)
            assert_error(answer, 503, "unavailable")
            assert time.perf_counter() - started < 4 + 3  # its deadline, and a loaded machine
            [hung] = {pid for pid, _, _ in calls(served.log)} - {os.getpid()}
            for _ in range(100):  # killed at the deadline plus the grace
                try:
                    os.kill(hung, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"the hung model process {hung} is still there")
            assert served.processes().pids() == []
            after = served.generate(n=ONE_CHUNK_N, seed=1)
            assert after.status_code == 200, after.text
            assert where(served.log)[-1] == "child"
    finally:
        served.close()


def test_a_model_still_loading_at_its_request_deadline_is_loaded_for_the_next(
    settings: Settings, echo: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request's deadline cuts its computation, not the load it started (a process's start:
    TensorFlow's import, then the model): that serves the requests that follow."""
    monkeypatch.setattr(offload, "CALL_GRACE_S", 0.2)
    served = Served(
        settings,
        tmp_path / "calls.log",
        ("echo",),
        child_load_seconds=3.0,
        inference_processes=1,
        inference_timeout=2,
    )
    try:
        with served.client:
            served.prime(seconds_per_row=1.5 * SECONDS_PER_ROW)  # heavy, within 2 s
            assert_error(served.generate(n=ONE_CHUNK_N, seed=1), 503, "unavailable")
            [loading] = served.processes().pids()
            time.sleep(3.0)  # its load ends (it was not killed at the deadline and grace)
            after = served.generate(n=ONE_CHUNK_N, seed=1)
            assert after.status_code == 200, after.text
            assert served.processes().pids() == [loading]
            assert where(served.log)[-1] == "child"
    finally:
        served.close()


def test_past_its_deadline_no_more_work_goes_to_the_model_process(
    settings: Settings, echo: None, tmp_path: Path
) -> None:
    served = Served(
        settings, tmp_path / "calls.log", ("echo",), inference_processes=1, inference_timeout=6
    )
    try:
        with served.client:
            # Priced at a quarter of its cost, 16 chunks of ~1 s each are admitted for 6 s.
            served.prime(seconds_per_row=SECONDS_PER_ROW / 4)
            before = len(calls(served.log))
            started = time.perf_counter()
            answer = served.generate(n=16 * chunks.GENERATE_CHUNK, seed=1)
            assert_error(answer, 503, "unavailable")
            assert time.perf_counter() - started < 6 + 3
            time.sleep(2 * chunks.GENERATE_CHUNK * SECONDS_PER_ROW + 0.5)
            sent = where(served.log, since=before)
            assert set(sent) == {"child"}
            # Each chunk sleeps 1.02 s: at most 6 began before the deadline, none after it.
            assert len(sent) <= 6, sent
            time.sleep(2 * chunks.GENERATE_CHUNK * SECONDS_PER_ROW)
            assert len(where(served.log, since=before)) == len(sent)
    finally:
        served.close()


def test_a_deleted_model_leaves_the_model_process(served: Served) -> None:
    for name in ("echo", "other"):
        assert served.generate(name, n=HEAVY_N, seed=1).status_code == 200
    children = served.processes()._children
    assert {key.split(":")[0] for key in children[0].models} == set(served.ids.values())
    assert served.client.delete("/v1/models/echo").status_code == 204
    assert served.generate("other", n=HEAVY_N, seed=1).status_code == 200
    assert {key.split(":")[0] for key in children[0].models} == {served.ids["other"]}


def test_errors_cross_the_process_boundary_unchanged() -> None:
    from ml.core.serving import UnsupportedOperation

    cases: list[Exception] = [
        ServiceError("validation_error", "bad rows", {"row": 3}),
        UnsupportedOperation("encode", ["generate"]),
        ValueError("unknown sampler"),
    ]
    for original in cases:
        again = offload.raised(portable(original))
        assert type(again) is type(original) and str(again) == str(original)
    service_error = offload.raised(portable(cases[0]))
    assert isinstance(service_error, ServiceError)
    assert (service_error.code, service_error.details) == ("validation_error", {"row": 3})
    other = offload.raised(portable(KeyError("x")))
    assert isinstance(other, RuntimeError) and "KeyError" in str(other)
