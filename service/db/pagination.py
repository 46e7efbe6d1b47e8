"""Keyset pagination, newest first, over a table's (created_at, id).

A cursor is the base64url (no `=` padding) of the JSON `[created_at as ISO 8601, id]` of the
last row of a page, optionally behind a leading tag (`["upload", …]`) where one listing joins
several sources. Anything a client sends that this service did not issue is a 422, never a 500.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from service.errors import ServiceError

Position = tuple[dt.datetime, str]
NOT_OURS = "cursor is not one this service issued"


class Keyed(Protocol):
    created_at: dt.datetime
    id: str


Row = TypeVar("Row", bound=Keyed)


def encode(payload: list[Any]) -> str:
    """A cursor holding `payload` (JSON)."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def decode(cursor: str) -> list[Any]:
    """The JSON list inside a cursor; ServiceError `validation_error` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise ServiceError("validation_error", NOT_OURS) from None
    if not isinstance(payload, list):
        raise ServiceError("validation_error", NOT_OURS)
    return payload


def encode_position(row: Keyed, *tag: str) -> str:
    """The cursor after `row`: `[*tag, created_at, id]`."""
    return encode([*tag, row.created_at.isoformat(), row.id])


def decode_position(cursor: str, *tag: str) -> Position:
    """The (created_at, id) inside a cursor made by `encode_position(row, *tag)`."""
    return position_of(decode(cursor), *tag)


def position_of(payload: list[Any], *tag: str) -> Position:
    """(created_at, id) from a decoded `[*tag, created_at, id]`: an aware time, a string id."""
    if len(payload) != len(tag) + 2 or payload[: len(tag)] != list(tag):
        raise ServiceError("validation_error", NOT_OURS)
    created, row_id = payload[len(tag) :]
    if not isinstance(created, str) or not isinstance(row_id, str):
        raise ServiceError("validation_error", NOT_OURS)
    try:
        when = dt.datetime.fromisoformat(created)
    except ValueError:
        raise ServiceError("validation_error", NOT_OURS) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ServiceError("validation_error", NOT_OURS)
    return when, row_id


def page(
    session: Session,
    query: Select[tuple[Row]],
    table: type[Row],
    *,
    limit: int,
    after: Position | None,
    tag: Sequence[str] = (),
) -> tuple[list[Row], str | None]:
    """One page of `query` over `table`, newest first, after `after`; and the next cursor."""
    created_at: Any = table.created_at
    row_id: Any = table.id
    if after is not None:
        created, last_id = after
        query = query.where(
            or_(created_at < created, and_(created_at == created, row_id < last_id))
        )
    ordered = query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)
    rows = list(session.scalars(ordered))
    more = len(rows) > limit
    next_cursor = encode_position(rows[limit - 1], *tag) if more else None
    return rows[:limit], next_cursor


class PageRequest(Protocol):
    limit: int
    cursor: str | None


def filtered_page(
    session: Session,
    table: type[Row],
    page_request: PageRequest,
    scope: Any,
    **equal: Any,
) -> tuple[list[Row], str | None]:
    """A page of the `table` rows that `scope` (a tenancy Scope) reaches and whose columns
    equal the given values (None or "": any), newest first, after the request's cursor."""
    query = select(table).where(scope.where(table.tenant))  # type: ignore[attr-defined]
    for column, value in equal.items():
        if value:
            query = query.where(getattr(table, column) == value)
    cursor = page_request.cursor
    after = decode_position(cursor) if cursor else None
    return page(session, query, table, limit=page_request.limit, after=after)
