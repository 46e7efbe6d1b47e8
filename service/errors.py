"""The one error type of the service and the one place that maps its codes to HTTP statuses."""

from __future__ import annotations

from typing import Any

STATUS_BY_CODE: dict[str, int] = {
    "validation_error": 422,
    "not_found": 404,
    "method_not_allowed": 405,
    "invalid_state": 409,
    "unsupported_operation": 409,
    "idempotency_key_reused": 409,
    "unauthorized": 401,
    "forbidden": 403,
    "payload_too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}


class ServiceError(Exception):
    def __init__(self, code: str, message: str, details: Any = None) -> None:
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}
