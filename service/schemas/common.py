"""Shapes shared by every resource: the error envelope and list pages."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, Field

from service.db import tenancy


class ErrorDetail(BaseModel):
    code: str = Field(description="What went wrong, in snake_case (`not_found`, …).")
    message: str = Field(description="For a person.")
    details: Any = Field(None, description="Per code: the fields at fault, the limits, …")


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code", "message", "details"}}`."""

    error: ErrorDetail


ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "No API key, or an unknown or revoked one (`unauthorized`)",
    403: "The key lacks the scope, or a cookie-signed write came from another site (`forbidden`)",
    404: "Not found, or another tenant's (`not_found`)",
    409: "Conflict with the resource's state (`invalid_state`, `unsupported_operation`, "
    "`idempotency_key_reused`)",
    413: "The body is larger than the service accepts (`payload_too_large`)",
    422: "Invalid input; `details` names each field (`validation_error`)",
    429: "The key holds its share already; retry after `Retry-After` seconds (`rate_limited`)",
    503: "Database, broker or model busy or unavailable; retry after `Retry-After` seconds "
    "(`unavailable`)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI answers for these error statuses, each the `{"error": …}` envelope."""
    return {s: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


ERROR_RESPONSES = error_responses(404, 409, 422, 503)

# `?tenant=` on the list routes: an admin key narrows the listing to one tenant; another key
# reaches only its own tenant, so any other value lists nothing.
TenantFilter = Annotated[
    str | None,
    Query(
        max_length=tenancy.MAX_CHARS,
        pattern=tenancy.PATTERN,
        description="Only this tenant's (admin keys; other keys only ever see their own).",
    ),
]

# `tenant` on a job, model or uploaded data set: whose it is, which an admin's listing across
# tenants needs to tell apart (another key only ever sees its own tenant's).
TenantField = Annotated[str, Field(description="The tenant that owns it.")]
