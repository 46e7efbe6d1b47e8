"""Metric points: narrow rows (job, name, step, value), upserted so a re-run step overwrites."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.tables import MetricPoint
from service.errors import ServiceError

Point = tuple[str, int, float]
StoredPoint = tuple[int, str, int, float | None, dt.datetime]  # id, name, step, value, recorded_at
BATCH_ROWS = 500  # far below SQLite's limit on bound variables per statement


def _insert_for(session: Session):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two supported backends
        raise RuntimeError(f"metric upsert is not implemented for {dialect}")
    return insert


def upsert(session: Session, *, job_id: str, points: Sequence[Point]) -> None:
    """Write points; a point already stored at (job, name, step) takes the new value."""
    if not points:
        return
    insert = _insert_for(session)
    now = utcnow()
    for start in range(0, len(points), BATCH_ROWS):
        rows = [
            {
                "job_id": job_id,
                "name": name,
                "step": int(step),
                "value": float(value) if math.isfinite(value) else None,
                "recorded_at": now,
            }
            for name, step, value in points[start : start + BATCH_ROWS]
        ]
        statement = insert(MetricPoint).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=["job_id", "name", "step"],
            set_={"value": statement.excluded.value, "recorded_at": statement.excluded.recorded_at},
        )
        session.execute(statement)


def read_series(
    session: Session,
    *,
    job_id: str,
    names: Iterable[str] | None = None,
    since_step: int | None = None,
) -> dict[str, dict[str, list[float | None] | list[int]]]:
    """`{name: {"steps": [...], "values": [...]}}`, steps ascending; missing values are None."""
    query = select(MetricPoint.name, MetricPoint.step, MetricPoint.value).where(
        MetricPoint.job_id == job_id
    )
    wanted = list(names) if names else None
    if wanted:
        query = query.where(MetricPoint.name.in_(wanted))
    if since_step is not None:
        query = query.where(MetricPoint.step > since_step)
    series: dict[str, dict[str, list]] = {}
    for name, step, value in session.execute(query.order_by(MetricPoint.name, MetricPoint.step)):
        entry = series.setdefault(name, {"steps": [], "values": []})
        entry["steps"].append(step)
        entry["values"].append(value)
    return series


def check_names(session: Session, *, job_id: str, wanted: Iterable[str]) -> list[str]:
    """The job's metric names; ServiceError 404 naming them when `wanted` holds others."""
    available = names(session, job_id=job_id)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise ServiceError(
            "not_found",
            f"job {job_id} has no metric named {', '.join(unknown)}; "
            f"available: {', '.join(available) or 'none yet'}",
            {"available": available},
        )
    return available


def names(session: Session, *, job_id: str) -> list[str]:
    query = select(MetricPoint.name).where(MetricPoint.job_id == job_id).distinct()
    return sorted(session.scalars(query))


def max_point_id(session: Session, *, job_id: str) -> int:
    """The largest row id among the job's points (0 when it has none)."""
    query = select(func.max(MetricPoint.id)).where(MetricPoint.job_id == job_id)
    return int(session.scalar(query) or 0)


def points_after(
    session: Session, *, job_id: str, after: int, upto: int | None, limit: int
) -> list[StoredPoint]:
    """The job's points with `after < id <= upto`, by id, at most `limit`."""
    point = MetricPoint
    query = select(point.id, point.name, point.step, point.value, point.recorded_at).where(
        point.job_id == job_id, point.id > after
    )
    if upto is not None:
        query = query.where(point.id <= upto)
    rows = session.execute(query.order_by(point.id).limit(limit))
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def latest_values(session: Session, *, job_id: str) -> dict[str, tuple[int, float | None]]:
    """Each metric's most recently written point, as {name: (step, value)}, by name."""
    newest = (
        select(func.max(MetricPoint.id))
        .where(MetricPoint.job_id == job_id)
        .group_by(MetricPoint.name)
        .scalar_subquery()
    )
    rows = session.execute(
        select(MetricPoint.name, MetricPoint.step, MetricPoint.value).where(
            MetricPoint.id.in_(newest)
        )
    )
    return {name: (step, value) for name, step, value in sorted(rows)}


def version(session: Session, *, job_id: str) -> str:
    """A token that changes whenever a point of the job is added or rewritten."""
    row = session.execute(
        select(func.count(), func.max(MetricPoint.id), func.max(MetricPoint.recorded_at)).where(
            MetricPoint.job_id == job_id
        )
    ).one()
    return f"{row[0]}:{row[1]}:{row[2]}"
