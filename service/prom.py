"""Prometheus metrics: `GET /metrics`.

Process-wide: requests and their latency per route template, inference rows and latency per
model kind (`observe_inference`), and the process's CPU and memory. Read at scrape time: jobs by
kind and status, queue depths from the broker, the age of running jobs' heartbeats, and the live
workers per queue with the age of each one's last heartbeat.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import auth
from service.config import Settings
from service.db.jobs import STATUSES
from service.db.tables import Job
from service.errors import ServiceError
from service.queue import QUEUES, REDIS_PRIORITY_STEPS
from service.workers_seen import live_workers, redis_client, workers_per_queue

T = TypeVar("T")
log = logging.getLogger(__name__)

disable_created_metrics()  # no `*_created` series: they double every counter's lines
REGISTRY = CollectorRegistry(auto_describe=True)
# The standard `process_*` names (CPU seconds, memory, open files) that dashboards expect.
ProcessCollector(registry=REGISTRY)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUESTS = Counter(
    "thermoml_http_requests",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "thermoml_http_request_duration_seconds",
    "Time to answer, per route template (event streams: time to their first byte).",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
INFERENCE_ROWS = Counter(
    "thermoml_inference_rows",
    "Rows scored, encoded, reconstructed, predicted or generated, per model kind.",
    ["kind"],
    registry=REGISTRY,
)
INFERENCE_LATENCY = Histogram(
    "thermoml_inference_duration_seconds",
    "Time of one inference call (the model's computation, not the HTTP round trip), per kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
UNMATCHED = "<unmatched>"  # one label for every path no route matched (no raw paths as labels)


def observe_inference(kind: str, rows: int, seconds: float) -> None:
    """Count one inference call of a model of `kind` over `rows` rows that took `seconds`."""
    INFERENCE_ROWS.labels(kind).inc(max(0, int(rows)))
    INFERENCE_LATENCY.labels(kind).observe(max(0.0, float(seconds)))


# --- requests -----------------------------------------------------------------------------------


class RequestMetrics:
    """ASGI middleware: counts and times requests under their route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        timed = False
        # Where the request was going, before a mounted app rewrites the scope's paths.
        asked = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", "")}

        def observe() -> None:
            nonlocal timed
            if not timed:
                timed = True
                LATENCY.labels(scope["method"], _route(scope, asked)).observe(
                    time.perf_counter() - started
                )

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                    observe()
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                observe()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            observe()
            REQUESTS.labels(scope["method"], _route(scope, asked), str(status)).inc()


def _route(scope: Scope, asked: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else _plain_route(scope.get("app"), {**asked, "method": "GET"})


def _plain_route(app: Any, asked: Scope) -> str:
    """The template of a Starlette route that does not record itself in the scope (the OpenAPI
    document, the docs' static files); `<unmatched>` when no route has the path."""
    for route in getattr(getattr(app, "router", None), "routes", ()):
        if not isinstance(route, Route | Mount):
            continue  # e.g. an included router: its routes record themselves
        match, _ = route.matches(asked)
        if match is Match.FULL:
            return f"{route.path}/{{path}}" if isinstance(route, Mount) else str(route.path)
    return UNMATCHED


def install(app: FastAPI) -> None:
    """Count and time every request of the app."""
    app.add_middleware(RequestMetrics)


# --- read at scrape time ------------------------------------------------------------------------


class ServiceCollector(Collector):
    """Jobs by kind and status, heartbeat ages and queue depths, read when Prometheus scrapes."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        yield from self._jobs()
        yield from self._durations()
        yield from self._queues()
        yield from self._workers()

    def _durations(self) -> Iterator[Any]:
        """Finished jobs' run times by kind and outcome, and running jobs' training speed: both
        read from the jobs table, the one record of every job."""
        durations = SummaryMetricFamily(
            "thermoml_job_duration_seconds",
            "Run time (started to finished) of finished jobs, by kind and outcome.",
            labels=["kind", "status"],
        )
        speed = GaugeMetricFamily(
            "thermoml_running_job_steps_per_second",
            "Optimizer steps (or simulation steps) per second of the running jobs, summed by kind.",
            labels=["kind"],
        )
        try:
            finished, running = self._read_durations()
        except Exception as exc:  # the database's own probe reports it as down
            log.debug("metrics: durations unavailable: %s", exc)
            return
        for kind, status, count, total in finished:
            durations.add_metric([kind, status], count_value=count, sum_value=float(total or 0))
        now = dt.datetime.now(dt.UTC)
        rates: dict[str, float] = {}
        for kind, started, progress in running:
            elapsed, step = _age(now, started), (progress or {}).get("step")
            if isinstance(step, int | float) and elapsed > 0:
                rates[kind] = rates.get(kind, 0.0) + step / elapsed
        for kind, rate in sorted(rates.items()):
            speed.add_metric([kind], rate)
        yield from (durations, speed)

    def _read_durations(self) -> tuple[list[Any], list[Any]]:
        with self.sessions() as session:
            seconds = _seconds_between(session, Job.started_at, Job.finished_at)
            finished = session.execute(
                select(Job.kind, Job.status, func.count(), func.sum(seconds))
                .where(Job.status.in_(("succeeded", "failed", "cancelled")))
                .where(Job.started_at.is_not(None), Job.finished_at.is_not(None))
                .group_by(Job.kind, Job.status)
            ).all()
            running = session.execute(
                select(Job.kind, Job.started_at, Job.progress).where(Job.status == "running")
            ).all()
        return list(finished), list(running)

    def _jobs(self) -> Iterator[Any]:
        jobs = GaugeMetricFamily(
            "thermoml_jobs", "Jobs in the database by kind and status.", labels=["kind", "status"]
        )
        newest = GaugeMetricFamily(
            "thermoml_running_jobs_newest_heartbeat_age_seconds",
            "Seconds since the newest heartbeat of any running job (-1: no running job).",
        )
        oldest = GaugeMetricFamily(
            "thermoml_running_jobs_oldest_heartbeat_age_seconds",
            "Seconds since the heartbeat of the running job heard from least recently "
            "(a stuck or lost worker shows here first; -1: no running job).",
        )
        up, read = _probe("database", self._read_jobs)
        if read is None:
            yield up
            return
        counts, beats = read
        seen = {(kind, status) for kind, status, _ in counts}
        for kind, status, count in counts:
            jobs.add_metric([kind, status], count)
        for kind in {kind for kind, _ in seen}:
            for status in STATUSES:
                if (kind, status) not in seen:
                    jobs.add_metric([kind, status], 0)
        now = dt.datetime.now(dt.UTC)
        for family, value in ((newest, beats[0]), (oldest, beats[1])):
            family.add_metric([], _age(now, value))
        yield from (up, jobs, newest, oldest)

    def _read_jobs(self) -> tuple[list[Any], Any]:
        """Job counts by (kind, status), and the newest and oldest heartbeat of running jobs."""
        with self.sessions() as session:
            counts = session.execute(
                select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
            ).all()
            beats = session.execute(
                select(func.max(Job.heartbeat_at), func.min(Job.heartbeat_at)).where(
                    Job.status == "running"
                )
            ).one()
        return list(counts), beats

    def _queues(self) -> Iterator[Any]:
        depth = GaugeMetricFamily(
            "thermoml_queue_depth", "Messages waiting in the broker, per queue.", labels=["queue"]
        )
        up, depths = _probe("broker", lambda: queue_depths(self.settings))
        if depths is None:
            yield up
            return
        for queue, count in sorted(depths.items()):
            depth.add_metric([queue], count)
        yield from (up, depth)

    def _workers(self) -> Iterator[Any]:
        per_queue = GaugeMetricFamily(
            "thermoml_workers",
            "Live workers (a heartbeat within three intervals) consuming each queue.",
            labels=["queue"],
        )
        ages = GaugeMetricFamily(
            "thermoml_worker_heartbeat_age_seconds",
            "Seconds since each live worker's last heartbeat.",
            labels=["worker"],
        )
        try:
            workers = live_workers(self.settings)
        except Exception as exc:  # the broker's own probe above reports it as down
            log.debug("metrics: workers unavailable: %s", exc)
            return
        for queue, count in sorted(workers_per_queue(workers, QUEUES).items()):
            per_queue.add_metric([queue], count)
        now = time.time()
        for worker in workers:
            ages.add_metric([worker.name], worker.age(now))
        yield from (per_queue, ages)


def _probe(dependency: str, read: Callable[[], T]) -> tuple[GaugeMetricFamily, T | None]:
    """`thermoml_<dependency>_up` (1 when `read` answered) and what it read (None if it failed)."""
    up = GaugeMetricFamily(
        f"thermoml_{dependency}_up", f"1 when the {dependency} answered the scrape."
    )
    try:
        value = read()
    except Exception as exc:
        log.warning("metrics: the %s did not answer: %s", dependency, exc)
        up.add_metric([], 0)
        return up, None
    up.add_metric([], 1)
    return up, value


def _seconds_between(session: Session, start: Any, end: Any) -> Any:
    """SQL for the seconds from `start` to `end`, in the session's database dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _age(now: dt.datetime, value: dt.datetime | None) -> float:
    if value is None:
        return -1.0
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return max(0.0, (now - value).total_seconds())


REDIS_PRIORITY_SEP = "\x06\x16"


def queue_depths(settings: Settings) -> dict[str, int]:
    """Messages waiting per queue: the LLEN of kombu's lists (one per priority) on Redis."""
    url = settings.resolved_broker_url
    if not url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {}
    client = redis_client(url)
    try:
        pipe = client.pipeline(transaction=False)
        names = [
            (queue, f"{queue}{REDIS_PRIORITY_SEP}{step}" if step else queue)
            for queue in QUEUES
            for step in REDIS_PRIORITY_STEPS
        ]
        for _, key in names:
            pipe.llen(key)
        counts = dict.fromkeys(QUEUES, 0)
        for (queue, _), length in zip(names, pipe.execute(), strict=True):
            counts[queue] += int(length)
        return counts
    finally:
        client.close()


# --- the endpoint -------------------------------------------------------------------------------

router = APIRouter(tags=["health"])


def _registry(request: Request) -> CollectorRegistry:
    state = request.app.state
    registry = getattr(state, "prom_registry", None)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ServiceCollector(state.sessions, state.settings))
        state.prom_registry = registry
    return registry  # type: ignore[no-any-return]


def _check_access(request: Request) -> None:
    """`THERMOML_METRICS_AUTH=required`: /metrics needs a key with the `read` scope, also when
    the rest of the API is open (`THERMOML_AUTH=disabled`). Keys are checked by `service.auth`."""
    if request.app.state.settings.metrics_auth != "required":
        return
    principal = getattr(request.state, "principal", None)
    if principal is not None and principal.key_id is not None:
        return  # the app-wide check already accepted a key for this request
    secret = auth.secret_of(request)
    if not secret:
        raise ServiceError(
            "unauthorized", "/metrics needs an API key here: send `Authorization: Bearer <key>`"
        )
    with request.app.state.sessions() as session:
        principal = auth.principal_for(session, secret)
    if principal is None:
        raise ServiceError("unauthorized", "the API key is unknown or revoked")
    if not {"read", "admin"} & principal.scopes:
        raise ServiceError("forbidden", "this key lacks the `read` scope that /metrics needs")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition: requests, latency, jobs, queues, heartbeats, inference.
    Open unless `THERMOML_METRICS_AUTH=required`."""
    _check_access(request)
    body = generate_latest(REGISTRY) + generate_latest(_registry(request))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
