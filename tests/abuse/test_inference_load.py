"""One client cannot take inference down: a model's requests are bounded (beyond: 503 at once,
with Retry-After; beyond a key's share: 429), a request past its deadline answers 503 and its
work stops, a request whose client left is dropped, and model work runs on threads of its own,
so health checks and reads answer while inference is saturated.

The model is `slowpoke`, a test kind whose operations sleep a fixed time per row or sample
(`time.sleep` releases the GIL, as TensorFlow's kernels do), so timings are known in advance.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ml.core import registry
from ml.core.spec import JobSpec
from service import chunks
from service.admission import ClientGone, Gate, Limits
from service.config import Settings
from service.db import keys as key_repo
from service.db import models as model_repo
from service.db.base import new_id
from service.errors import ServiceError
from service.main import create_app
from tests.abuse.helpers import assert_error, assert_still_serving
from tests.conftest import RecordingPublisher

SECONDS_PER_ROW = 0.002  # slowpoke's time per row or sample


class SlowSpec(JobSpec):
    kind: Literal["slowpoke"]


class Slowpoke:
    """Sleeps SECONDS_PER_ROW a row (score) or a sample (generate); counts its calls."""

    calls = 0
    lock = threading.Lock()

    def __init__(self, files: Any, meta: dict[str, Any]) -> None:
        self.input_shape = (2,)
        self.operations = ["score", "generate"]

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        with Slowpoke.lock:
            Slowpoke.calls += 1
        rows = len(inputs) if inputs is not None else int(options["n"])
        time.sleep(SECONDS_PER_ROW * rows)
        if operation == "generate":
            return {"samples": np.zeros((rows, 2), np.float32)}
        return {"scores": np.zeros(rows), "threshold": 1.0, "is_anomaly": np.zeros(rows, bool)}


@pytest.fixture
def slowpoke() -> Iterator[None]:
    registry.register_kind(
        name="slowpoke",
        spec=SlowSpec,
        summary="test model that sleeps",
        category="model",
        serves=frozenset({"score", "generate"}),
        load=Slowpoke,
    )(lambda *_: None)  # type: ignore[arg-type]
    Slowpoke.calls = 0
    yield
    registry._KINDS.pop("slowpoke", None)


def serve(settings: Settings, **update: Any) -> tuple[TestClient, dict[str, str]]:
    """A client of an app with `update`d settings, one slowpoke model `slow`, and two keys.
    Model work stays on the API's threads (what these tests count and time); heavy work in
    model processes is tests/abuse/test_offload.py's."""
    update = {"inference_processes": 0, **update}
    app = create_app(settings.model_copy(update=update), reconcile=False)
    app.state.publisher = RecordingPublisher()
    keys = {}
    with app.state.sessions.begin() as session:
        model_repo.create(
            session,
            model_id=new_id(),
            name="slow",
            kind="slowpoke",
            artifact_uri="file:///nowhere",
            sha256="0" * 64,
            input_shape=[2],
            capabilities=["score", "generate"],
            files={},
        )
        for name in ("alice", "bob"):
            keys[name] = key_repo.create(session, scopes=["admin"], name=name)[1]
    return TestClient(app), keys


def post_all(
    client: TestClient, bodies: list[dict[str, Any]], **kw: Any
) -> list[tuple[Any, float]]:
    """Every body posted to slow's generate at once; (answer, seconds) of each."""

    def one(body: dict[str, Any]) -> tuple[Any, float]:
        started = time.perf_counter()
        answer = client.post("/v1/models/slow/generate", json=body, **kw)
        return answer, time.perf_counter() - started

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_beyond_the_queue_answers_503_at_once(settings: Settings, slowpoke: None) -> None:
    # One at a time and two waiting; each request sleeps 1.2 s (in two chunks).
    client, _ = serve(settings, inference_concurrency=1, inference_queue=2, inference_timeout=60)
    with client:
        answers = post_all(client, [{"n": 600}] * 10)
        assert_still_serving(client)
    served = [seconds for a, seconds in answers if a.status_code == 200]
    refused = [(a, seconds) for a, seconds in answers if a.status_code != 200]
    assert len(served) == 3 and len(refused) == 7
    for answer, _ in refused:
        assert_error(answer, 503, "unavailable")
        assert int(answer.headers["Retry-After"]) >= 1
    assert max(served) > 3 * 600 * SECONDS_PER_ROW  # they did wait their turn
    # Refused at once, not after waiting their turn: every refusal came back while the served
    # requests' work still ran (a clock bound here would measure the machine's load instead).
    assert max(seconds for _, seconds in refused) < max(served) - 600 * SECONDS_PER_ROW


def test_one_key_beyond_its_share_gets_429(settings: Settings, slowpoke: None) -> None:
    client, keys = serve(
        settings,
        auth="required",
        inference_concurrency=1,
        inference_queue=3,
        inference_key_share=0.5,
    )
    alice = {"Authorization": f"Bearer {keys['alice']}"}
    bob = {"Authorization": f"Bearer {keys['bob']}"}
    with client, ThreadPoolExecutor(4) as pool:
        # alice's share is 2 of the 4 admitted: her third and fourth are refused, bob still gets in.
        hers = [pool.submit(post_all, client, [{"n": 300}] * 4, headers=alice)]
        time.sleep(0.3)
        his = client.post("/v1/models/slow/generate", json={"n": 10}, headers=bob)
        answers = hers[0].result()
    codes = sorted(a.status_code for a, _ in answers)
    assert codes == [200, 200, 429, 429], codes
    assert_error(next(a for a, _ in answers if a.status_code == 429), 429, "rate_limited")
    assert his.status_code == 200, his.text


def test_past_its_deadline_a_request_answers_503_and_its_work_stops(
    settings: Settings, slowpoke: None
) -> None:
    # 5 000 samples: 10 s of work in chunks of ~1 s; the deadline is 1 s.
    client, _ = serve(settings, inference_timeout=1.0)
    with client:
        started = time.perf_counter()
        answer = client.post("/v1/models/slow/generate", json={"n": 5000})
        took = time.perf_counter() - started
        assert_error(answer, 503, "unavailable")
        # The deadline, plus the chunk under way when it passed (1 s), plus a loaded machine.
        assert took < 4.0, took
        calls = Slowpoke.calls
        time.sleep(2 * chunks.GENERATE_CHUNK * SECONDS_PER_ROW)
        assert Slowpoke.calls == calls  # nothing more computed for a request that is gone
        assert calls < 5000 / chunks.GENERATE_CHUNK / 2
        assert_still_serving(client)


def test_saturated_inference_leaves_health_and_reads_answering(
    settings: Settings, slowpoke: None
) -> None:
    # 60 heavy requests all admitted, on 4 inference threads (2 heavy): model work is saturated.
    client, _ = serve(
        settings,
        inference_concurrency=60,
        inference_heavy_concurrency=60,
        inference_threads=4,
        inference_timeout=4.0,
    )
    with client, ThreadPoolExecutor(1) as pool:
        load = pool.submit(post_all, client, [{"n": 5000}] * 60)
        time.sleep(1.0)
        assert not load.done()
        # Each one's first answer counts: routes waiting for a thread answer late only once.
        for path in ("/healthz", "/v1/jobs"):
            started = time.perf_counter()
            assert client.get(path).status_code == 200
            assert time.perf_counter() - started < 0.5, path
        assert_still_serving(client)
        # A light request to the busy model runs on the light threads: one row, 2 ms of work.
        started = time.perf_counter()
        light = client.post("/v1/models/slow/score", json={"inputs": [[0.0, 1.0]]})
        assert light.status_code == 200, light.text
        assert time.perf_counter() - started < 0.5
        answers = load.result()
    for answer, seconds in answers:  # each one answered, none hung: 4 s, plus a chunk, plus load
        assert_error(answer, 503, "unavailable")
        assert seconds < 4.0 + 1.0 + 3.0, seconds


# --- the gate and the chunks, without HTTP --------------------------------------------------


def limits(**update: Any) -> Limits:
    base = dict(
        concurrency=1, queue=4, heavy_concurrency=1, heavy_seconds=1.0, key_share=1.0, timeout=30
    )
    return Limits(**{**base, **update})  # type: ignore[arg-type]


def test_a_request_whose_client_left_while_queued_is_dropped() -> None:
    async def scenario() -> None:
        gate = Gate(limits())
        first = gate.ticket("score", 10, key=None, batched=False)
        await gate.enter(first)
        second = gate.ticket("score", 10, key=None, batched=False)

        async def gone() -> bool:
            return True

        with pytest.raises(ClientGone):
            await gate.enter(second, gone)
        assert second not in gate.admitted and not gate.waiting
        gate.leave(first)
        assert second.started is None  # never run

    asyncio.run(scenario())


def test_chunked_work_stops_when_the_client_leaves() -> None:
    async def scenario() -> int:
        from service.admission import Admission

        admission = Admission(Settings())
        gate = admission.gate("m:x")
        ticket = gate.ticket("score", 100, key=None, batched=False)
        await gate.enter(ticket)
        computed: list[int] = []
        calls = 0

        async def gone_after_two() -> bool:
            return calls >= 2

        def compute(i: int, j: int) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            computed.append(j - i)
            return {"scores": np.zeros(j - i)}

        async def on_a_thread(i: int, j: int) -> dict[str, Any]:
            return await admission.run_sync(compute, i, j)

        with pytest.raises(ClientGone):
            await chunks.run(
                gate,
                ticket,
                operation="score",
                compute=on_a_thread,
                total=100,
                chunk=lambda: 10,
                disconnected=gone_after_two,
            )
        return sum(computed)

    assert asyncio.run(scenario()) == 20


def test_heavy_work_leaves_slots_to_light_work() -> None:
    async def scenario() -> None:
        gate = Gate(limits(concurrency=2, heavy_concurrency=1))
        gate.estimate("generate").update(100, 10.0)  # 0.1 s a unit: 100 units are heavy
        heavy = [gate.ticket("generate", 100, key=None, batched=False) for _ in range(2)]
        await gate.enter(heavy[0])
        waiting = asyncio.ensure_future(gate.enter(heavy[1]))
        await asyncio.sleep(0)
        assert not waiting.done()  # the heavy lane is full
        light = gate.ticket("generate", 1, key=None, batched=False)
        await asyncio.wait_for(gate.enter(light), 1.0)  # passes the waiting heavy one
        assert light.started is not None and not light.heavy
        gate.leave(light)
        gate.leave(heavy[0])
        await asyncio.wait_for(waiting, 1.0)
        gate.leave(heavy[1])

    asyncio.run(scenario())


def test_a_request_that_cannot_make_its_deadline_is_refused_at_once() -> None:
    async def scenario() -> None:
        gate = Gate(limits(timeout=15))
        gate.estimate("generate").update(100, 10.0)
        running = gate.ticket("generate", 100, key=None, batched=False)
        await gate.enter(running)
        late = gate.ticket("generate", 100, key=None, batched=False)  # 10 s wait + 10 s > 15 s
        with pytest.raises(ServiceError) as refused:
            await gate.enter(late)
        assert refused.value.code == "unavailable"
        assert refused.value.details["retry_after"] == 10

    asyncio.run(scenario())


def test_a_small_call_does_not_price_a_large_request_out_of_its_deadline() -> None:
    """One sample through 1000 diffusion steps took 1 s: 10 000 samples do not take 10 000 s
    (the work is vectorised). Until a call on many items is measured the cost is unknown, and
    the request is admitted (its chunks then measure it and its deadline still holds)."""

    async def scenario() -> None:
        gate = Gate(limits(timeout=120))
        gate.estimate("generate").update(1000, 1.0, items=1)  # generate n=1, 1000 steps
        large = gate.ticket("generate", 10_000 * 1000, key=None, batched=False)
        await asyncio.wait_for(gate.enter(large), 1.0)
        assert large.started is not None and large.heavy
        gate.leave(large)
        gate.estimate("generate").update(512 * 1000, 5.0, items=512)  # a measured chunk
        assert gate.estimate("generate").cost(10_000 * 1000) == pytest.approx(5.0 / 512 * 10_000)

    asyncio.run(scenario())


def test_the_first_measured_chunk_refuses_at_once_what_waits_in_vain() -> None:
    """An unknown-cost heavy request runs; another waits behind it. Once the first chunk prices
    the running one far past the waiting one's deadline, the waiting one is refused then, not
    at its deadline."""

    async def scenario() -> None:
        gate = Gate(limits(timeout=30))
        running = gate.ticket("generate", 100_000, key=None, batched=False)
        await gate.enter(running)
        waiting = gate.ticket("generate", 100_000, key=None, batched=False)
        queued = asyncio.ensure_future(gate.enter(waiting))
        await asyncio.sleep(0)
        assert not queued.done() and running.heavy and waiting.heavy  # unknown: heavy, queued

        async def compute(i: int, j: int) -> dict[str, Any]:
            await asyncio.sleep(0.05)  # 100 units in 0.05 s: the whole request takes ~50 s
            return {"samples": np.zeros((j - i, 2))}

        async def gone() -> bool:
            return True  # stop the running request after its first chunk

        with pytest.raises(ClientGone):
            await chunks.run(
                gate,
                running,
                operation="generate",
                compute=compute,
                total=100_000,
                chunk=lambda: 100,
                disconnected=gone,
            )
        with pytest.raises(ServiceError) as refused:
            await asyncio.wait_for(queued, 1.0)
        assert refused.value.code == "unavailable"
        gate.leave(running)

    asyncio.run(scenario())


def test_a_deadline_timer_that_fires_early_still_answers_503(
    settings: Settings, slowpoke: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's clock may run behind time.monotonic() (uvloop reads it once an iteration):
    its deadline timer can fire while the ticket's deadline is a moment away. That is the
    deadline all the same: 503, never a 500."""
    from service import serving

    entered = serving.admitted

    @contextlib.asynccontextmanager
    async def clock_behind(gate: Gate, ticket: Any, disconnected: Any) -> Any:
        async with entered(gate, ticket, disconnected):
            ticket.deadline += 30  # as if time.monotonic() lagged the timer by 30 s
            yield

    monkeypatch.setattr(serving, "admitted", clock_behind)
    client, _ = serve(settings, inference_timeout=0.5)
    with client:
        answer = client.post("/v1/models/slow/generate", json={"n": 5000})
        assert_error(answer, 503, "unavailable")
