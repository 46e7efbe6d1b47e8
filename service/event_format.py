"""Server-sent events on the wire: the `status` event's data and the `id/event/data` framing."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_status(job: Any) -> dict[str, Any]:
    """The `status` event's data."""
    error = {"code": job.error_code, "message": job.error_message or ""} if job.error_code else None
    return {
        "id": job.id,
        "status": job.status,
        "attempts": job.attempts,
        "worker": job.worker,
        "device": job.device,
        "error": error,
        "model_id": job.model_id,
        "cancel_requested": bool(job.cancel_requested),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def encode(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)


def format_event(event: str, data: dict[str, Any] | str, event_id: int) -> str:
    payload = data if isinstance(data, str) else encode(data)
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n"
