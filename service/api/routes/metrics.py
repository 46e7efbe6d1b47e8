"""A job's metric history, as JSON series or as one wide CSV table."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.api.deps import MetricNamesDep, PrincipalDep, SessionDep
from service.db import jobs as job_repo
from service.db import metrics as metric_repo
from service.schemas.common import ERROR_RESPONSES
from service.schemas.jobs import MetricsOut, Series

router = APIRouter(prefix="/v1/jobs", tags=["metrics"], responses=ERROR_RESPONSES)

MAX_STEP = 2**62  # within a database BIGINT, with room to spare
SinceStep = Annotated[
    int | None,
    Query(
        ge=-MAX_STEP,
        le=MAX_STEP,
        description="Only points with a step greater than this (for polling).",
    ),
]


@router.get(
    "/{job_id}/metrics",
    response_model=MetricsOut,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "JSON series, or with `format=csv` one CSV table (a column per metric)",
        }
    },
)
def get_metrics(
    job_id: str,
    session: SessionDep,
    names: MetricNamesDep,
    principal: PrincipalDep,
    since_step: SinceStep = None,
    format: Literal["json", "csv"] = "json",
) -> MetricsOut | Response:
    """`{"job_id", "series": {name: {"steps", "values"}}}`; non-finite values are null."""
    job_repo.get(session, job_id=job_id, scope=principal.scope)
    wanted = names or None
    series = metric_repo.read_series(session, job_id=job_id, names=wanted, since_step=since_step)
    if wanted and set(wanted) - set(series):
        metric_repo.check_names(session, job_id=job_id, wanted=wanted)
    if format == "csv":
        return Response(_wide_csv(series), media_type="text/csv")
    return MetricsOut(
        job_id=job_id,
        series={name: Series(steps=s["steps"], values=s["values"]) for name, s in series.items()},  # type: ignore[arg-type]
    )


def _wide_csv(series: dict[str, dict[str, list]]) -> str:
    """One row per step, one column per metric; an empty cell where a metric has no point."""
    names = sorted(series)
    rows: dict[int, dict[str, float | None]] = {}
    for name in names:
        for step, value in zip(series[name]["steps"], series[name]["values"], strict=True):
            rows.setdefault(step, {})[name] = value
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["step", *names])
    for step in sorted(rows):
        cells = rows[step]
        writer.writerow([step, *("" if cells.get(n) is None else repr(cells[n]) for n in names)])
    return out.getvalue()
