"""Typed errors: one class per kind of answer, each carrying the server's error envelope.

Every error the server sends has the body `{"error": {"code", "message", "details"}}`; the class
follows the HTTP status, `code` says precisely what went wrong (`not_found`, `invalid_spec`,
`over_capacity`, …; README "Errors" lists them).
"""

from __future__ import annotations

from typing import Any

import httpx


class ThermomlError(Exception):
    """An answer of thermoml that is not a success, or no answer at all."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status: int | None = None,
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class ConnectionFailed(ThermomlError):
    """The server could not be reached (refused, timed out, name not resolved)."""


class InvalidRequest(ThermomlError):
    """400 or 422: the request itself is wrong; `details` names each field."""


class Unauthorized(ThermomlError):
    """401: no key, an unknown key, or a revoked one."""


class Forbidden(ThermomlError):
    """403: the key lacks the scope this needs."""


class NotFound(ThermomlError):
    """404: no such job, model or data set (or not one of this key's tenant)."""


class Conflict(ThermomlError):
    """409: the object's state does not allow it (e.g. an Idempotency-Key reused elsewhere)."""


class PayloadTooLarge(ThermomlError):
    """413: the body, or what it decodes to, is over a limit; `details` says which."""


class RateLimited(ThermomlError):
    """429: too many requests or jobs for this key; `retry_after` says when to try again."""


class Unavailable(ThermomlError):
    """503: the service is busy or a dependency is down; `retry_after` says when to try again."""


class ServerError(ThermomlError):
    """Any other 5xx."""


BY_STATUS: dict[int, type[ThermomlError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
}


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the delta form; a date is ignored)."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def from_response(response: httpx.Response) -> ThermomlError:
    """The error the response stands for, with the server's own message."""
    status = response.status_code
    kind = BY_STATUS.get(status, ServerError if status >= 500 else ThermomlError)
    code, message, details = f"http_{status}", "", None
    try:
        error = response.json().get("error") or {}
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
        details = error.get("details")
    except (ValueError, AttributeError):
        pass
    if not message:
        try:
            text = response.text.strip()[:300]
        except httpx.ResponseNotRead:
            text = ""
        message = f"HTTP {status} {response.reason_phrase}" + (f": {text}" if text else "")
    return kind(
        message, code=code, status=status, details=details, retry_after=retry_after(response)
    )
