"""The keyset cursor: its wire format, and a 422 for any cursor this service did not issue."""

from __future__ import annotations

import base64
import datetime as dt
import json
from types import SimpleNamespace

import pytest

from service.db import pagination
from service.errors import ServiceError


def raw(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_the_cursor_is_base64url_json_of_created_at_and_id() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    row = SimpleNamespace(created_at=when, id="abc")
    cursor = pagination.encode_position(row)
    assert cursor == raw([when.isoformat(), "abc"]) and "=" not in cursor
    assert pagination.decode_position(cursor) == (when, "abc")
    tagged = pagination.encode_position(row, "upload")
    assert pagination.decode_position(tagged, "upload") == (when, "abc")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "a",
        raw({"a": 1}),
        raw("2024-01-01T00:00:00+00:00"),
        raw(["2024-01-01T00:00:00+00:00"]),
        raw(["2024-01-01T00:00:00+00:00", "x", "y"]),
        raw(["2024-01-01T00:00:00", "x"]),  # naive
        raw(["2024-01-01T00:00:00+00:00", 7]),  # the id is not a string
        raw(["2024-01-01T00:00:00+00:00", None]),
        raw([20240101, "x"]),
        raw(["yesterday", "x"]),
        raw(["upload", "2024-01-01T00:00:00+00:00", "x"]),  # another listing's tag
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_a_cursor_this_service_did_not_issue_is_a_validation_error(cursor: str) -> None:
    with pytest.raises(ServiceError) as caught:
        pagination.decode_position(cursor)
    assert caught.value.code == "validation_error"
