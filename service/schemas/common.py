"""Shapes shared by every resource: the error envelope and list pages."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


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
