"""A job's metric history as a PNG (`metrics.png`), cached per version of the job's points."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from ml.core.registry import UnknownKind, get_kind
from service import plots
from service.api.deps import SessionDep
from service.db import jobs as job_repo
from service.db import metrics as metric_repo
from service.db.tables import MetricPoint
from service.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/v1/jobs", tags=["metrics"], responses=ERROR_RESPONSES)

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


def _cache(request: Request) -> PngCache:
    state = request.app.state
    cache = getattr(state, "plot_cache", None)
    if cache is None:
        cache = state.plot_cache = PngCache()
    return cache  # type: ignore[no-any-return]


def _version(session: SessionDep, job_id: str) -> str:
    """Changes whenever a point of the job is added or rewritten."""
    row = session.execute(
        select(func.count(), func.max(MetricPoint.id), func.max(MetricPoint.recorded_at)).where(
            MetricPoint.job_id == job_id
        )
    ).one()
    return f"{row[0]}:{row[1]}:{row[2]}"


@router.get(
    "/{job_id}/metrics.png",
    responses={200: {"content": {"image/png": {}}, "description": "the plot"}},
    response_class=Response,
)
def metrics_png(
    job_id: str,
    request: Request,
    session: SessionDep,
    names: Annotated[
        list[str] | None,
        Query(description="Metrics to draw (comma-separated or repeated); default: all."),
    ] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    """The metric history: a panel per metric, related thermodynamic metrics sharing one
    (energy and free energy, temperatures, entropy, entropy production), with units."""
    job = job_repo.get(session, job_id=job_id)
    wanted = [n.strip() for item in names or [] for n in item.split(",") if n.strip()]
    available = metric_repo.check_names(session, job_id=job_id, wanted=wanted)
    key = f"{job_id}|{','.join(wanted)}|{_version(session, job_id)}|{job.status}"
    etag = '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    cache = _cache(request)
    png = cache.get(key)
    if png is None:
        shown = wanted or plots.default_names(available)
        fetch = sorted(set(shown) | ({"time"} & set(available)))
        series = metric_repo.read_series(session, job_id=job_id, names=fetch or None)
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
        cache.put(key, png)
    return Response(png, media_type="image/png", headers=headers)
