"""A job's live events as server-sent events (one shared database poller per job and process)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.api.deps import MetricNamesDep, PrincipalDep
from service.events import EventHub, Position, Stream
from service.schemas.common import ERROR_RESPONSES

router = APIRouter(prefix="/v1/jobs", tags=["metrics"], responses=ERROR_RESPONSES)
MAX_EVENT_ID_CHARS = 18  # an event id is below 10**18, so its cursor fits a database BIGINT

EVENTS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "Events `status`, `progress`, `metrics` (a batch of points as series), "
        "and `end`; each with an increasing `id`.",
    }
}


def get_hub(request: Request) -> EventHub:
    """The app's event hub, made on first use (in the server's event loop)."""
    state = request.app.state
    hub = getattr(state, "event_hub", None)
    if hub is None:
        settings = state.settings
        hub = state.event_hub = EventHub(
            state.sessions,
            interval=settings.events_poll_interval,
            keepalive=settings.events_keepalive,
        )
        hub.close_on_exit_signals()
    return hub  # type: ignore[no-any-return]


async def close_hub(app: Any) -> None:
    """End every open event stream; call it when the application shuts down. The closed hub is
    dropped, so that the application started again streams with a new one."""
    hub = getattr(app.state, "event_hub", None)
    if hub is not None:
        app.state.event_hub = None
        hub.close()


class EventStreamResponse(StreamingResponse):
    """Unsubscribes the stream however the response ends (also when it never started)."""

    def __init__(self, stream: Stream) -> None:
        super().__init__(
            stream.events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.stream.close()


@router.get("/{job_id}/events", responses=EVENTS_DOC, response_class=StreamingResponse)
async def job_events(
    job_id: str,
    request: Request,
    names: MetricNamesDep,
    principal: PrincipalDep,
    last_event_id: Annotated[
        str | None,
        Query(
            max_length=MAX_EVENT_ID_CHARS,
            description="Resume after this event id (browsers send the header instead).",
        ),
    ] = None,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=MAX_EVENT_ID_CHARS)
    ] = None,
) -> StreamingResponse:
    """Server-sent events until the job ends: `status` and `progress` at once, then the metric
    points (all of them, or those after `Last-Event-ID`) as `metrics` batches, then what changes,
    and `end` once the job ended. Reconnecting with `Last-Event-ID` resumes without gaps."""
    position = Position.parse(last_event_id_header or last_event_id)
    stream = Stream(get_hub(request), job_id, position, names or None, scope=principal.scope)
    await stream.open()
    return EventStreamResponse(stream)
