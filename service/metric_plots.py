"""A job's metric history as a PNG, cached per version of the job's points (LRU)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from ml.core.registry import UnknownKind, get_kind
from service import plots
from service.db import jobs as job_repo
from service.db import metrics as metric_repo
from service.db.tenancy import Scope

CACHE_ENTRIES = 64


class PngCache:
    """The last rendered plots, keyed by what they were drawn from (LRU)."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            png = self._items.get(key)
            if png is not None:
                self._items.move_to_end(key)
            return png

    def put(self, key: str, png: bytes) -> None:
        with self._lock:
            self._items[key] = png
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)


@dataclass(frozen=True)
class Plot:
    """What a plot is drawn from: the job, the metrics asked for (none: the defaults), those
    the job has, and the version of its points and status (`key`, and its `etag`)."""

    job: Any
    wanted: list[str]
    available: list[str]
    key: str

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.key.encode()).hexdigest()[:32] + '"'


def identify(session: Session, *, job_id: str, wanted: list[str], scope: Scope) -> Plot:
    """The plot of these metrics of the job as it stands; 404 for no job (that `scope` reaches)
    or an unknown name."""
    job = job_repo.get(session, job_id=job_id, scope=scope)
    available = metric_repo.check_names(session, job_id=job_id, wanted=wanted)
    version = metric_repo.version(session, job_id=job_id)
    key = f"{job_id}|{','.join(wanted)}|{version}|{job.status}"
    return Plot(job, wanted, available, key)


def render(session: Session, cache: PngCache, plot: Plot) -> bytes:
    """The plot's PNG, drawn unless the cache has it: a panel per metric, related
    thermodynamic metrics sharing one, with units."""
    png = cache.get(plot.key)
    if png is not None:
        return png
    job = plot.job
    shown = plot.wanted or plots.default_names(plot.available)
    fetch = sorted(set(shown) | ({"time"} & set(plot.available)))
    series = metric_repo.read_series(session, job_id=job.id, names=fetch or None)
    try:
        category = get_kind(job.kind).category
    except UnknownKind:
        category = "model"
    png = plots.render(
        {n: s for n, s in series.items() if n in shown},
        kind=job.kind,
        category=category,
        spec=job.spec,
        title=f"{job.name} ({job.kind}, {job.status})",
        names=shown,
        time_series=series.get("time"),
    )
    cache.put(plot.key, png)
    return png
