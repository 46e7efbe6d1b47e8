"""Every error leaves the service in one envelope: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from ml.core.registry import list_kinds
from service.errors import STATUS_BY_CODE, ServiceError

log = logging.getLogger(__name__)

CODE_BY_STATUS = {status: code for code, status in STATUS_BY_CODE.items()}
CODE_BY_STATUS[409] = "invalid_state"


def _field_path(loc: tuple[Any, ...]) -> str:
    # Drop the union member's tag ("cooling", "CoolingSpec") from body paths.
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "body" and parts[1] in set(list_kinds()):
        parts = [parts[0], *parts[2:]]
    return ".".join(parts)


def validation_details(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    details = []
    messages = []
    for err in errors:
        field = _field_path(tuple(err.get("loc", ())))
        message = str(err.get("msg", "invalid"))
        kind_error = field == "body.kind" and err.get("type") == "literal_error"
        if kind_error or err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            given = (err.get("ctx") or {}).get("tag", err.get("input"))
            known = ", ".join(list_kinds())
            message = (
                f"unknown kind {given!r}; known kinds: {known}"
                if given is not None
                else f"the spec needs a `kind`; known kinds: {known}"
            )
            field = "body.kind"
        details.append({"field": field, "message": message, "type": err.get("type")})
        messages.append(f"{field}: {message}")
    summary = "; ".join(messages[:5]) + (
        f" (and {len(messages) - 5} more)" if len(messages) > 5 else ""
    )
    return summary, details


def _respond(code: str, message: str, details: Any = None, headers: Any = None) -> JSONResponse:
    error = ServiceError(code, message, details)
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        if exc.code == "unauthorized" and _wants_page(request):
            return RedirectResponse("/signin", status_code=303)  # a person in a browser
        headers = None
        if exc.code in ("rate_limited", "unavailable"):
            retry = exc.details.get("retry_after", 5) if isinstance(exc.details, dict) else 5
            headers = {"Retry-After": str(int(retry))}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = validation_details(list(exc.errors()))
        return _respond("validation_error", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODE_BY_STATUS.get(exc.status_code)
        message = str(exc.detail)
        if code is None:
            # A framework 4xx with no code of its own (400: a body that cannot be parsed, such
            # as bytes that are not UTF-8, JSON nested past the parser's recursion limit or an
            # integer of over 4300 digits) is the client's mistake: 422, never a 500.
            code = "validation_error" if exc.status_code < 500 else "internal"
            if exc.__cause__ is not None and code == "validation_error":
                message = f"{message}: {str(exc.__cause__)[:200]}"
        return _respond(code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        # A value the database cannot store or compare (a NUL in text, an integer past
        # BIGINT) that no earlier check caught: the client's input, so 422, and logged, since
        # an earlier check should have named the field.
        log.warning("database refused a value: %s", exc.orig if exc.orig is not None else exc)
        message = "a value in the request cannot be stored or compared by the database"
        return _respond("validation_error", message)

    @app.exception_handler(DBAPIError)
    async def _database(_: Request, exc: DBAPIError) -> JSONResponse:
        log.warning("database error: %s", exc.orig if exc.orig is not None else exc)
        if exc.connection_invalidated or _is_unavailable(exc):
            return _respond(
                "unavailable",
                "the database is unavailable; retry shortly",
                headers={"Retry-After": "5"},
            )
        log.exception("database error")
        return _respond("internal", "internal error")

    @app.exception_handler(PoolTimeout)
    async def _pool(_: Request, exc: PoolTimeout) -> JSONResponse:
        return _respond(
            "unavailable", "the database is busy; retry shortly", headers={"Retry-After": "5"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _respond("internal", "internal error; it has been logged")


def _wants_page(request: Request) -> bool:
    path = request.url.path
    return (
        request.method == "GET"
        and not path.startswith("/v1/")
        and "text/html" in request.headers.get("accept", "")
    )


def _is_unavailable(exc: DBAPIError) -> bool:
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError)
