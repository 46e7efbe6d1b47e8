"""What a request may be before it is routed, as pure ASGI middleware.

InputGuard: no NUL character in the path, the query string or a header (see service.inputs).

BodyLimit: bytes are counted as they stream in, and a body past its limit is answered 413
without being read further (nothing is buffered to measure it, and a chunked body is held to
the same limit as one that declares its length).

Binary rows (.npy, Arrow IPC) may be as large as THERMOML_MAX_REQUEST_BYTES: they are used as
they arrive. Every other body (JSON, forms) is parsed into Python objects that take ~15 times
the bytes of its text, so it is held to the smaller THERMOML_MAX_JSON_BYTES.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from service.errors import ServiceError
from service.inputs import NUL, nul_error

log = logging.getLogger(__name__)

Scope = dict[str, Any]
EXEMPT = ("/v1/datasets",)  # uploads stream to disk under their own limit
BINARY_TYPES = (b"application/x-npy", b"application/vnd.apache.arrow.stream")


class InputGuard:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        field = _nul_field(scope) if scope["type"] == "http" else None
        if field is not None:
            await _send_error(send, nul_error(field))
            return
        await self.app(scope, receive, send)


def _nul_field(scope: Scope) -> str | None:
    """Where a NUL character is in the request's path, query string or headers, if anywhere."""
    if NUL in scope["path"]:
        return "path"
    query = scope.get("query_string") or b""
    if b"%00" in query or b"\x00" in query:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        name = next((k for k, v in pairs if NUL in k or NUL in v), "")
        return f"query.{name}" if name and NUL not in name else "query"
    for header, value in scope.get("headers") or []:
        if b"\x00" in value or b"\x00" in header:
            return f"header.{header.decode('latin-1')}" if b"\x00" not in header else "header"
    return None


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int, max_json_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = min(max_bytes, max_json_bytes or max_bytes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        limit, setting = self._limit(headers.get(b"content-type", b""))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(send, self._error(limit, setting), close=True)
            return
        seen, passed, started = 0, False, False

        async def counted() -> Any:
            nonlocal seen, passed
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    passed = True  # stop here: the rest of the body is never read
                    raise self._error(limit, setting)
            return message

        async def answer(message: Any) -> None:
            nonlocal started
            if passed:
                return  # the app's answer to a body it never got whole (FastAPI says 422)
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, answer)
        except Exception:
            if not passed or started:
                raise
            log.debug("request refused past the body limit", exc_info=True)
        if passed and not started:
            await _send_error(send, self._error(limit, setting), close=True)

    def _limit(self, content_type: bytes) -> tuple[int, str]:
        media_type = content_type.split(b";")[0].strip().lower()
        if media_type in BINARY_TYPES:
            return self.max_bytes, "THERMOML_MAX_REQUEST_BYTES"
        if self.max_json_bytes < self.max_bytes:
            return self.max_json_bytes, "THERMOML_MAX_JSON_BYTES"
        return self.max_bytes, "THERMOML_MAX_REQUEST_BYTES"

    def _error(self, limit: int, setting: str) -> ServiceError:
        hint = (
            "send rows as .npy or Arrow IPC, or fewer rows per request"
            if setting.endswith("JSON_BYTES")
            else "send fewer rows per request"
        )
        return ServiceError(
            "payload_too_large",
            f"the request body is larger than {limit} bytes ({setting}); {hint}",
            {"max_bytes": limit},
        )


async def _send_error(send: Any, error: ServiceError, *, close: bool = False) -> None:
    """Answer `error` in the envelope; `close`: end the connection (a body left unread)."""
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
