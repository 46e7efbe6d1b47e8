"""Live job events: the SSE wire format, resuming, names, and the shared per-job poller."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event

from service import events
from service import jobs as lifecycle
from service.config import Settings
from service.db import metrics as metric_repo
from service.db.session import make_engine, make_sessionmaker
from service.db.tenancy import EVERYONE
from tests.conftest import RecordingPublisher, free_port, submit
from tests.integration.helpers import THERMOML, start, stop, wait_for

COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}  # 21 points per metric


def parse(text: str) -> list[dict[str, Any]]:
    """The events of a text/event-stream body (comments and `retry` skipped)."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            out.append(
                {
                    "id": int(fields["id"]),
                    "event": fields["event"],
                    "data": json.loads(fields["data"]),
                }
            )
    return out


def stream(client: TestClient, job_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse(response.read().decode())


def merged(evts: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    series: dict[str, dict[str, list[Any]]] = {}
    for e in evts:
        if e["event"] == "metrics":
            for name, s in e["data"]["series"].items():
                entry = series.setdefault(name, {"steps": [], "values": []})
                entry["steps"] += s["steps"]
                entry["values"] += s["values"]
    return series


def test_an_ended_job_streams_its_history_then_end(client: TestClient) -> None:
    job = submit(client, COOLING)
    evts = stream(client, job["id"])
    kinds = [e["event"] for e in evts]
    assert kinds[:2] == ["status", "progress"] and kinds[-1] == "end"
    assert set(kinds[2:-1]) == {"metrics"}
    ids = [e["id"] for e in evts]
    assert ids == sorted(set(ids)), "ids must increase"
    assert evts[0]["data"]["status"] == "succeeded"
    assert evts[1]["data"]["fraction"] == 1.0
    end = evts[-1]["data"]
    assert end["status"] == "succeeded" and end["error"] is None
    assert end["result"]["final_temperature"] == pytest.approx(25 + 75 * 0.95**20)
    expected = client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    got = merged(evts)
    assert got == expected
    assert all(e["data"]["recorded_at"] for e in evts if e["event"] == "metrics")


def test_last_event_id_resumes_after_what_was_sent(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "BATCH_POINTS", 30)  # several `metrics` events for 105 points
    job = submit(client, COOLING)
    first = stream(client, job["id"])
    batches = [e for e in first if e["event"] == "metrics"]
    assert len(batches) >= 3
    resume_after = batches[0]["id"]
    rest = stream(client, job["id"], headers={"Last-Event-ID": str(resume_after)})
    assert all(e["id"] > resume_after for e in rest)
    assert [e["event"] for e in rest][:2] == ["status", "progress"]
    seen = merged([batches[0]])
    later = merged(rest)
    for name in merged(first):
        assert sorted(
            seen.get(name, {}).get("steps", []) + later.get(name, {}).get("steps", [])
        ) == (list(range(21)))
    # The query parameter does the same for clients that cannot set headers.
    by_query = stream(client, job["id"], params={"last_event_id": resume_after})
    assert merged(by_query) == later
    # Resuming after the very last event sends no point again.
    done = stream(client, job["id"], headers={"Last-Event-ID": str(first[-1]["id"])})
    assert [e["event"] for e in done] == ["status", "progress", "end"]
    assert done[0]["id"] > first[-1]["id"]


def test_names_filter_the_metrics(client: TestClient) -> None:
    job = submit(client, COOLING)
    evts = stream(client, job["id"], params={"names": "temperature,heat"})
    assert set(merged(evts)) == {"temperature", "heat"}


def test_unknown_job_and_bad_event_id_answer_in_the_envelope(client: TestClient) -> None:
    missing = client.get("/v1/jobs/nope/events")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    job = submit(client, COOLING)
    bad = client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"


def run_fake_worker(
    settings: Settings,
    job_id: str,
    *,
    steps: int,
    every: float,
    start: threading.Event | None = None,
    fail: bool = False,
) -> threading.Thread:
    """A worker in a thread that writes points and progress the way the real reporter does."""
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))

    def work() -> None:
        if start is not None:
            start.wait(10)
        with sessions.begin() as session:
            attempt = lifecycle.claim(
                session, job_id=job_id, worker="fake", lease_s=60, max_attempts=3
            )
        assert attempt is not None
        for step in range(steps):
            time.sleep(every)
            with sessions.begin() as session:
                metric_repo.upsert(
                    session,
                    job_id=job_id,
                    points=[("energy", step, float(step)), ("temperature", step, 1.0 / (1 + step))],
                )
                lifecycle.heartbeat(
                    session,
                    job_id=job_id,
                    attempt=attempt,
                    progress={"fraction": (step + 1) / steps, "step": step, "total_steps": steps},
                )
        with sessions.begin() as session:
            if fail:
                lifecycle.finish(
                    session,
                    job_id=job_id,
                    attempt=attempt,
                    status="failed",
                    error_code="diverged",
                    error_message="it blew up",
                )
            else:
                lifecycle.finish(
                    session, job_id=job_id, attempt=attempt, status="succeeded", result={"ok": 1}
                )

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def live_client(settings: Settings) -> Iterator[TestClient]:
    """An app whose jobs stay queued (no inline run) and whose pollers read every 20 ms."""
    from service.main import create_app

    fast = settings.model_copy(update={"events_poll_interval": 0.02, "events_keepalive": 0.5})
    app = create_app(fast, reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)
    with TestClient(app) as client:
        yield client


def test_a_running_job_is_followed_live_to_its_end(live_client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    job = submit(live_client, {"kind": "cooling"})
    worker = run_fake_worker(settings, job["id"], steps=12, every=0.03)
    evts = stream(live_client, job["id"])
    worker.join(10)
    kinds = [e["event"] for e in evts]
    assert kinds[0] == "status" and kinds[-1] == "end"
    statuses = [e["data"]["status"] for e in evts if e["event"] == "status"]
    assert statuses[-1] == "succeeded"
    assert "running" in statuses or statuses[0] != "queued"
    fractions = [e["data"].get("fraction") for e in evts if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert merged(evts)["energy"]["steps"] == list(range(12))
    assert merged(evts)["energy"]["values"] == [float(s) for s in range(12)]
    assert evts[-1]["data"] == {
        "status": "succeeded",
        "error": None,
        "model_id": None,
        "result": {"ok": 1},
    }
    ids = [e["id"] for e in evts]
    assert ids == sorted(set(ids))
    assert sum(k == "metrics" for k in kinds) > 1, "points should arrive in several batches"


def test_a_failed_job_ends_with_its_error(live_client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    job = submit(live_client, {"kind": "cooling"})
    run_fake_worker(settings, job["id"], steps=3, every=0.01, fail=True).join(10)
    end = stream(live_client, job["id"])[-1]
    assert end["event"] == "end"
    assert end["data"]["status"] == "failed"
    assert end["data"]["error"] == {"code": "diverged", "message": "it blew up"}


def test_a_quiet_stream_sends_keepalive_comments(live_client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    job = submit(live_client, {"kind": "cooling"})
    start = threading.Event()
    worker = run_fake_worker(settings, job["id"], steps=2, every=0.01, start=start)
    with live_client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        lines = response.iter_lines()
        seen = []
        for line in lines:
            seen.append(line)
            if line.startswith(": keepalive"):
                break
        start.set()
        rest = "\n".join(lines)
    worker.join(10)
    assert any(line.startswith(": keepalive") for line in seen)
    assert "event: end" in rest


# --- the shared poller, without HTTP --------------------------------------------------------


def count_statements(engine: Any) -> list[str]:
    statements: list[str] = []

    @sa_event.listens_for(engine, "before_cursor_execute")
    def _count(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    return statements


@pytest.mark.parametrize("watchers", [1, 50])
def test_one_poller_serves_every_watcher_of_a_job(
    settings: Settings, watchers: int, client: TestClient
) -> None:
    """The database work per interval does not grow with the number of watchers."""
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    job = submit(client, {"kind": "cooling"})
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    statements = count_statements(engine)
    interval = 0.05
    steps = 10

    async def main() -> tuple[list[list[str]], events.EventHub, float]:
        hub = events.EventHub(sessions, interval=interval, keepalive=5)
        streams = [
            events.Stream(hub, job["id"], events.Position(), scope=EVERYONE)
            for _ in range(watchers)
        ]
        for s in streams:
            await s.open()
        assert len(hub.pollers) == 1
        started = time.monotonic()
        run_fake_worker(settings, job["id"], steps=steps, every=0.02)

        async def consume(s: events.Stream) -> list[str]:
            return [chunk async for chunk in s.events()]

        outputs = await asyncio.wait_for(asyncio.gather(*(consume(s) for s in streams)), timeout=20)
        elapsed = time.monotonic() - started
        await asyncio.sleep(interval * 3)
        assert hub.pollers == {}, "the poller stops once its job ended"
        return outputs, hub, elapsed

    outputs, _, elapsed = asyncio.run(main())
    assert all(out[-1].split("\n")[1] == "event: end" for out in outputs)
    assert len({"".join(o) for o in outputs}) == 1, "every watcher gets the same events"
    reads = [s for s in statements if "metric_points" in s or "FROM jobs" in s]
    # Priming reads the job and its last point id; then each tick reads the job row and the
    # new points once, for all watchers (they subscribed before any point existed: no backlog).
    per_tick = (len(reads) - 2) / (elapsed / interval)
    assert per_tick <= 2.5, (len(reads), elapsed / interval)
    engine.dispose()


def test_a_subscriber_that_falls_behind_is_dropped(
    settings: Settings, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_BACKLOG_UPDATES", 2)
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    job = submit(client, {"kind": "cooling"})
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))

    async def main() -> list[str]:
        hub = events.EventHub(sessions, interval=0.01, keepalive=5)
        slow = events.Stream(hub, job["id"], events.Position(), scope=EVERYONE)
        await slow.open()
        poller = hub.pollers[job["id"]]
        for step in range(4):
            poller._fan_out(
                events.Update(points=[(step + 1, "x", step, 1.0, events.dt.datetime.now())])
            )
        out = [chunk async for chunk in slow.events()]
        hub.close()
        return out

    out = asyncio.run(main())
    assert "event: end" not in "".join(out), "a dropped stream ends without `end`; it resumes"


def test_closing_the_hub_ends_open_streams(settings: Settings, client: TestClient) -> None:
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    job = submit(client, {"kind": "cooling"})
    sessions = make_sessionmaker(make_engine(settings.resolved_database_url))

    async def main() -> list[str]:
        hub = events.EventHub(sessions, interval=0.01, keepalive=5)
        s = events.Stream(hub, job["id"], events.Position(), scope=EVERYONE)
        await s.open()
        asyncio.get_running_loop().call_later(0.1, hub.close)
        return [chunk async for chunk in s.events()]

    out = asyncio.run(asyncio.wait_for(main(), 5))
    assert "event: status" in "".join(out)


@pytest.mark.integration
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_server_with_open_streams_stops_promptly(tmp_path: Path, sig: int) -> None:
    """uvicorn waits for open responses before shutting down: the hub must end its streams."""
    port = free_port()
    env = {"THERMOML_DATA_DIR": str(tmp_path / "state")}
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URI"):
        env[f"THERMOML_{name}"] = ""
    subprocess.run(
        [THERMOML, "migrate"], env={**os.environ, **env}, check=True, capture_output=True
    )
    api = start(["api", "--port", str(port)], env, tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200, 60, "the API")
        job = httpx.post(f"{base}/v1/jobs", json={"kind": "cooling"}, timeout=10).json()
        received: list[str] = []

        def watch() -> None:
            with httpx.stream("GET", f"{base}/v1/jobs/{job['id']}/events", timeout=30) as r:
                received.extend(r.iter_lines())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        wait_for(lambda: any("event: progress" in line for line in received), 10, "the stream")
        started = time.monotonic()
        api.send_signal(sig)
        api.wait(15)
        assert time.monotonic() - started < 10
        watcher.join(5)
        assert not watcher.is_alive()
    finally:
        stop(api)
