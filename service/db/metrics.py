"""Metric points: narrow rows (job, name, step, value), upserted so a re-run step overwrites."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.tables import MetricPoint
from service.errors import ServiceError

Point = tuple[str, int, float]
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
