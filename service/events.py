"""Live job events: one shared poller per watched job, fanned out to every subscriber.

An API process runs at most one poller per job that someone is watching. Once per interval it
reads the job row and the job's metric points whose row id is above its cursor, and puts what
changed on the asyncio queue of each subscriber, so that a hundred watchers of a job cost the
database the same two small queries per interval as one.

A subscriber first gets the job's current status and progress and, read once from the database,
the points it has not seen (all of them, or those after its `Last-Event-ID`); then the poller's
updates. Event ids are `cursor * ID_SCALE + n`: `cursor` is the largest metric row id sent so far
and `n` counts the events sent since it last moved, so ids increase, also across a resume.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import jobs as job_repo
from service.db import metrics as metric_repo
from service.db import tenancy
from service.db.jobs import TERMINAL
from service.errors import ServiceError
from service.event_format import encode, format_event, iso, job_status
from service.exit_signals import chain_exit_signals

log = logging.getLogger(__name__)

ID_SCALE = 1_000_000
BATCH_POINTS = 5000  # points per `metrics` event, and per read of the poller
PAGES_PER_TICK = 20  # a poller falling behind catches up this many batches per interval
MAX_BACKLOG_UPDATES = 200  # a subscriber this far behind is dropped (it reconnects and resumes)
RETRY_MS = 2000

Row = metric_repo.StoredPoint  # id, name, step, value, recorded_at


@dataclass
class Snapshot:
    status: dict[str, Any]
    progress: dict[str, Any]
    result: dict[str, Any] | None = None
    tenant: str = tenancy.DEFAULT  # whose job: a subscriber's scope must reach it

    @property
    def ended(self) -> bool:
        return self.status["status"] in TERMINAL


@dataclass
class Update:
    """What one poller tick found: new points, and the status / progress if they changed."""

    points: list[Row]
    status: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    end: Snapshot | None = None
    # The `metrics` data, encoded once per names filter and shared by the subscribers.
    _encoded: dict[frozenset[str] | None, str | None] = field(default_factory=dict, repr=False)

    def metrics_data(self, names: frozenset[str] | None) -> str | None:
        if names not in self._encoded:
            self._encoded[names] = metrics_payload(self.points, names)
        return self._encoded[names]


CLOSED = Update(points=[])  # sentinel: the stream must end (shutdown, or it fell behind)


def metrics_payload(rows: Iterable[Row], names: frozenset[str] | None) -> str | None:
    """`metrics` event data: the points as series, when the newest was recorded and when it
    was read; None when no point passes the names filter."""
    series: dict[str, dict[str, list[Any]]] = {}
    newest: dt.datetime | None = None
    for _, name, step, value, recorded_at in rows:
        if names is not None and name not in names:
            continue
        entry = series.setdefault(name, {"steps": [], "values": []})
        entry["steps"].append(step)
        entry["values"].append(value)
        if newest is None or recorded_at > newest:
            newest = recorded_at
    if not series:
        return None
    now = dt.datetime.now(dt.UTC)
    return encode({"series": series, "recorded_at": iso(newest), "read_at": iso(now)})


# --- database reads (run in threads) ----------------------------------------------------------


def read_snapshot(sessions: sessionmaker[Session], job_id: str) -> Snapshot:
    with sessions() as session:
        job = job_repo.get(session, job_id=job_id, scope=tenancy.EVERYONE)
        snap = Snapshot(job_status(job), dict(job.progress or {}), tenant=job.tenant)
        if snap.ended:
            snap.result = job.result
        return snap


def read_points(
    sessions: sessionmaker[Session], job_id: str, *, after: int, upto: int | None = None
) -> list[Row]:
    """Points of the job with `after < id <= upto`, by id: one batch (`BATCH_POINTS`)."""
    with sessions() as session:
        return metric_repo.points_after(
            session, job_id=job_id, after=after, upto=upto, limit=BATCH_POINTS
        )


def max_point_id(sessions: sessionmaker[Session], job_id: str) -> int:
    with sessions() as session:
        return metric_repo.max_point_id(session, job_id=job_id)


# --- the shared poller --------------------------------------------------------------------------


class Poller:
    """Reads one job once per interval and fans what changed out to its subscribers."""

    def __init__(self, hub: EventHub, job_id: str) -> None:
        self.hub = hub
        self.job_id = job_id
        self.cursor = 0
        self.snapshot: Snapshot | None = None
        self.subscribers: set[asyncio.Queue[Update]] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ticks = 0
        self.task = asyncio.create_task(self._run(), name=f"thermoml-events-{job_id[:8]}")

    def subscribe(self) -> tuple[asyncio.Queue[Update], int, Snapshot]:
        """A queue of updates after the returned cursor, and the snapshot at that cursor."""
        assert self.snapshot is not None
        queue: asyncio.Queue[Update] = asyncio.Queue()
        self.subscribers.add(queue)
        return queue, self.cursor, self.snapshot

    def unsubscribe(self, queue: asyncio.Queue[Update]) -> None:
        self.subscribers.discard(queue)

    async def _prime(self) -> None:
        sessions = self.hub.sessions
        self.snapshot = await asyncio.to_thread(read_snapshot, sessions, self.job_id)
        self.cursor = await asyncio.to_thread(max_point_id, sessions, self.job_id)

    async def _run(self) -> None:
        try:
            await self._prime()
        except asyncio.CancelledError:
            self.hub._forget(self)
            self.ready.cancel()
            raise
        except Exception as exc:
            self.hub._forget(self)
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        assert self.snapshot is not None
        try:
            ended = self.snapshot.ended
            while not ended:
                await asyncio.sleep(self.hub.interval)
                if not self.subscribers:
                    break
                try:
                    ended = await self._tick()
                except Exception as exc:  # the database may be briefly away: try again
                    log.warning("events of job %s: read failed: %s", self.job_id, exc)
        finally:
            self.hub._forget(self)

    async def _tick(self) -> bool:
        """One read: the job row first, then its new points (so that an ended job's last points
        are read after its status says it ended). True once the job ended and all is sent."""
        sessions = self.hub.sessions
        self.ticks += 1
        snap = await asyncio.to_thread(read_snapshot, sessions, self.job_id)
        previous = self.snapshot
        assert previous is not None
        updates: list[Update] = []
        for _ in range(PAGES_PER_TICK):
            rows = await asyncio.to_thread(read_points, sessions, self.job_id, after=self.cursor)
            if rows:
                self.cursor = rows[-1][0]
                updates.append(Update(points=rows))
            if len(rows) < BATCH_POINTS:
                caught_up = True
                break
        else:
            caught_up = False
        last = updates[-1] if updates else Update(points=[])
        if snap.progress != previous.progress:
            last.progress = snap.progress
        if snap.status != previous.status:
            last.status = snap.status
        ended = snap.ended and caught_up
        if ended:
            last.end = snap
        changed = last.progress is not None or last.status is not None or ended
        if changed and not updates:
            updates.append(last)
        self.snapshot = snap
        for update in updates:
            self._fan_out(update)
        return ended

    def _fan_out(self, update: Update) -> None:
        for queue in list(self.subscribers):
            if queue.qsize() >= MAX_BACKLOG_UPDATES:
                log.info("events of job %s: dropping a subscriber that fell behind", self.job_id)
                self.subscribers.discard(queue)
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(CLOSED)
            else:
                queue.put_nowait(update)

    def close(self) -> None:
        for queue in list(self.subscribers):
            queue.put_nowait(CLOSED)
        self.subscribers.clear()
        self.task.cancel()


class EventHub:
    """The process's pollers, one per watched job."""

    def __init__(self, sessions: sessionmaker[Session], *, interval: float, keepalive: float):
        self.sessions = sessions
        self.interval = interval
        self.keepalive = keepalive
        self.pollers: dict[str, Poller] = {}
        self.closed = False
        self._restore_signals: Callable[[], None] | None = None

    async def poller(self, job_id: str) -> Poller:
        """The job's running poller (started and primed if needed); 404 if there is no job."""
        if self.closed:
            raise ServiceError("unavailable", "the service is shutting down")
        poller = self.pollers.get(job_id)
        if poller is None:
            poller = self.pollers[job_id] = Poller(self, job_id)
        await asyncio.shield(poller.ready)
        return poller

    def _forget(self, poller: Poller) -> None:
        if self.pollers.get(poller.job_id) is poller:
            del self.pollers[poller.job_id]

    def close(self) -> None:
        """End every stream (at shutdown: open streams would otherwise hold the server up)."""
        self.closed = True
        for poller in list(self.pollers.values()):
            poller.close()
        self.pollers.clear()
        if self._restore_signals is not None:
            self._restore_signals()
            self._restore_signals = None

    def close_on_exit_signals(self) -> None:
        """End the streams as soon as the server is asked to stop (see `chain_exit_signals`)."""
        self._restore_signals = chain_exit_signals(self.close)


# --- one subscriber's stream ---------------------------------------------------------------------


@dataclass
class Position:
    """Where a client is: the largest metric row id it was sent, and events since."""

    cursor: int = 0
    seq: int = 0

    @classmethod
    def parse(cls, raw: str | None) -> Position:
        if raw is None or not raw.strip():
            return cls()
        try:
            value = int(raw.strip())
        except ValueError:
            raise ServiceError(
                "validation_error", f"Last-Event-ID {raw!r} is not an id this service sent"
            ) from None
        if value < 0:
            raise ServiceError("validation_error", f"Last-Event-ID {raw!r} is negative")
        return cls(*divmod(value, ID_SCALE))

    def next_id(self, cursor: int | None = None) -> int:
        if cursor is not None and cursor > self.cursor:
            self.cursor, self.seq = cursor, 0
        else:
            self.seq += 1
        return self.cursor * ID_SCALE + self.seq


class Stream:
    """One client's server-sent events: subscribed on `open`, unsubscribed on `close`."""

    def __init__(
        self,
        hub: EventHub,
        job_id: str,
        position: Position,
        names: Iterable[str] | None = None,
        *,
        scope: tenancy.Scope,
    ) -> None:
        self.hub, self.job_id, self.position, self.scope = hub, job_id, position, scope
        self.names = frozenset(names) if names else None
        self._subscription: tuple[Poller, asyncio.Queue[Update], int, Snapshot] | None = None

    async def open(self) -> None:
        """Join the job's poller; raises 404 before any byte is sent (also for a job that the
        stream's scope does not reach: the shared poller reads it for whoever may see it)."""
        poller = await self.hub.poller(self.job_id)
        assert poller.snapshot is not None
        if not self.scope.reaches(poller.snapshot.tenant):
            raise job_repo.not_found(self.job_id)
        self._subscription = (poller, *poller.subscribe())

    def close(self) -> None:
        if self._subscription is not None:
            self._subscription[0].unsubscribe(self._subscription[1])

    def _metrics(self, rows: list[Row], update: Update | None = None) -> str | None:
        if rows and rows[0][0] <= self.position.cursor:  # already sent (a resumed client)
            rows, update = [r for r in rows if r[0] > self.position.cursor], None
        if not rows:
            return None
        cursor = rows[-1][0]
        payload = update.metrics_data(self.names) if update else metrics_payload(rows, self.names)
        if payload is None:
            self.position.cursor = cursor  # nothing the client asked for: move on silently
            return None
        return format_event("metrics", payload, self.position.next_id(cursor))

    def _end(self, snap: Snapshot) -> str:
        data = {
            "status": snap.status["status"],
            "error": snap.status["error"],
            "model_id": snap.status["model_id"],
            "result": snap.result,
        }
        return format_event("end", data, self.position.next_id())

    async def events(self) -> AsyncIterator[str]:
        """`status` and `progress` now, the points not yet sent, then live updates to `end`."""
        assert self._subscription is not None, "open() first"
        _, queue, upto, snap = self._subscription
        try:
            yield f"retry: {RETRY_MS}\n\n"
            yield format_event("status", snap.status, self.position.next_id())
            yield format_event("progress", snap.progress, self.position.next_id())
            after = self.position.cursor
            while after < upto:
                rows = await asyncio.to_thread(
                    read_points, self.hub.sessions, self.job_id, after=after, upto=upto
                )
                if not rows:
                    break
                after = rows[-1][0]
                if chunk := self._metrics(rows):
                    yield chunk
            if snap.ended:
                yield self._end(snap)
                return
            while True:
                try:
                    update = await asyncio.wait_for(queue.get(), timeout=self.hub.keepalive)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if update is CLOSED:
                    return
                if chunk := self._metrics(update.points, update):
                    yield chunk
                if update.progress is not None:
                    yield format_event("progress", update.progress, self.position.next_id())
                if update.status is not None:
                    yield format_event("status", update.status, self.position.next_id())
                if update.end is not None:
                    yield self._end(update.end)
                    return
        finally:
            self.close()
