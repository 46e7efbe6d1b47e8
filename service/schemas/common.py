"""Shapes shared by every resource: the error envelope and list pages."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, Field

from service.db import tenancy


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (404, "Not found"),
        (409, "Conflict with the resource's state"),
        (422, "Invalid input; `details` names each field"),
        (503, "Database or broker unavailable; retry"),
    )
}

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
