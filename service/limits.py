"""Request body size limit, as pure ASGI middleware (no body is buffered to check it)."""

from __future__ import annotations

import json
from typing import Any

from service.errors import ServiceError

Scope = dict[str, Any]
EXEMPT = ("/v1/datasets",)  # uploads stream to disk under their own limit


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ServiceError("payload_too_large", self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return (
            f"the request body is larger than {self.max_bytes} bytes "
            "(THERMOML_MAX_REQUEST_BYTES); send fewer rows per request"
        )

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(ServiceError("payload_too_large", self._message()).body()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
