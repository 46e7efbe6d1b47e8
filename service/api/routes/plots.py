"""A job's metric history as a PNG (`metrics.png`), cached per version of the job's points."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from service import metric_plots
from service.api.deps import MetricNamesDep, PrincipalDep, SessionDep
from service.bodies import BINARY
from service.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/v1/jobs", tags=["metrics"], responses=ERROR_RESPONSES)


def _cache(request: Request) -> metric_plots.PngCache:
    state = request.app.state
    cache = getattr(state, "plot_cache", None)
    if cache is None:
        cache = state.plot_cache = metric_plots.PngCache()
    return cache  # type: ignore[no-any-return]


@router.get(
    "/{job_id}/metrics.png",
    responses={
        200: {"content": {"image/png": {"schema": BINARY}}, "description": "the plot"},
        304: {"description": "Not modified: the plot is the one `If-None-Match` names"},
    },
    response_class=Response,
)
def metrics_png(
    job_id: str,
    request: Request,
    session: SessionDep,
    names: MetricNamesDep,
    principal: PrincipalDep,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    """The metric history: a panel per metric, related thermodynamic metrics sharing one
    (energy and free energy, temperatures, entropy, entropy production), with units."""
    plot = metric_plots.identify(session, job_id=job_id, wanted=names, scope=principal.scope)
    headers = {"ETag": plot.etag, "Cache-Control": "no-cache"}
    if if_none_match and plot.etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    png = metric_plots.render(session, _cache(request), plot)
    return Response(png, media_type="image/png", headers=headers)
