"""Which workers are alive, and on which queues: a heartbeat key per worker in the broker's Redis.

Each worker's main process writes `thermoml:worker:<node name>` every
`worker_heartbeat_interval` seconds: its queues, pid, the jobs it is running and when it wrote,
with a time to live of three intervals, so a worker that dies silently disappears by itself and
one that stops cleanly (or that `thermoml up` saw die) is deleted at once. The API reads the
keys for `/readyz` (a queue with queued jobs and no live worker), `/metrics` and the dashboard,
which shows each live worker with the job it is running (read from the database: the heartbeat's
job list may be an interval old, and names jobs of every tenant).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.config import Settings
from service.db.tables import Job
from service.db.tenancy import Scope

KEY_PREFIX = "thermoml:worker:"
MISSED_BEATS = 3  # a worker silent for this many intervals is gone


def redis_client(url: str, timeout: float = 2.0) -> Any:
    """A redis-py client for a kombu broker URL (`redis+socket://` is `unix://` to redis-py)."""
    import redis

    if url.startswith("redis+socket://"):
        url = "unix://" + url.removeprefix("redis+socket://")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"not a Redis broker URL: {url.split('://')[0]}://")
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


@dataclass(frozen=True)
class WorkerBeat:
    name: str
    queues: tuple[str, ...]
    pid: int
    beat_at: float  # seconds since the epoch
    jobs: tuple[str, ...] = field(default_factory=tuple)

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.beat_at)


def key_of(name: str) -> str:
    return KEY_PREFIX + name


def beat(client: Any, *, name: str, queues: Iterable[str], jobs: Iterable[str], ttl: float) -> None:
    """Write one heartbeat of worker `name`."""
    body = {
        "queues": sorted(queues),
        "pid": os.getpid(),
        "beat_at": time.time(),
        "jobs": sorted(jobs),
    }
    client.set(key_of(name), json.dumps(body), px=max(1, int(ttl * 1000)))


def forget(client: Any, name: str) -> None:
    """The worker stopped (or was seen to die): it is gone now, not after its time to live."""
    client.delete(key_of(name))


def live_workers(settings: Settings) -> list[WorkerBeat]:
    """Workers whose last heartbeat is recent (raises when the broker cannot be read)."""
    client = redis_client(settings.resolved_broker_url, settings.publish_timeout)
    try:
        keys = sorted(client.scan_iter(match=KEY_PREFIX + "*", count=500))
        values = client.mget(keys) if keys else []
    finally:
        client.close()
    limit = MISSED_BEATS * settings.worker_heartbeat_interval
    found = []
    for key, raw in zip(keys, values, strict=True):
        parsed = _parse(key, raw)
        if parsed is not None and parsed.age() <= limit + 1:
            found.append(parsed)
    return found


def _parse(key: bytes, raw: bytes | None) -> WorkerBeat | None:
    if raw is None:
        return None  # expired between SCAN and MGET
    try:
        body = json.loads(raw)
        return WorkerBeat(
            name=key.decode().removeprefix(KEY_PREFIX),
            queues=tuple(str(q) for q in body["queues"]),
            pid=int(body["pid"]),
            beat_at=float(body["beat_at"]),
            jobs=tuple(str(j) for j in body.get("jobs", ())),
        )
    except (ValueError, KeyError, TypeError):
        return None


def workers_per_queue(workers: Iterable[WorkerBeat], queues: Iterable[str]) -> dict[str, int]:
    counts = dict.fromkeys(queues, 0)
    for worker in workers:
        for queue in worker.queues:
            counts[queue] = counts.get(queue, 0) + 1
    return counts


@dataclass(frozen=True)
class CurrentJob:
    """A job a worker is running; `id` and `kind` are None when the caller's scope does not
    reach it (another tenant's job: the worker is busy, with what is not said)."""

    id: str | None
    kind: str | None


def running_on(session: Session, names: Iterable[str], scope: Scope) -> dict[str, list[CurrentJob]]:
    """The jobs each of the workers `names` runs now, oldest first, as `scope` may see them."""
    names = sorted(set(names))
    if not names:
        return {}
    rows = session.execute(
        select(Job.worker, Job.id, Job.kind, Job.tenant)
        .where(Job.status == "running", Job.worker.in_(names))
        .order_by(Job.started_at, Job.id)
    ).all()
    found: dict[str, list[CurrentJob]] = {}
    for worker, job_id, kind, tenant in rows:
        seen = scope.reaches(tenant)
        found.setdefault(str(worker), []).append(
            CurrentJob(id=job_id if seen else None, kind=kind if seen else None)
        )
    return found


def queued_jobs(session: Session) -> dict[str, int]:
    """Jobs waiting (status `queued`) per queue, from the database: the truth of job state."""
    rows = session.execute(
        select(Job.queue, func.count()).where(Job.status == "queued").group_by(Job.queue)
    ).all()
    return {str(queue): int(count) for queue, count in rows}
