"""What a client's text and JSON may hold, checked before any work is done with them.

- No NUL character anywhere (ids, names, filters, headers, JSON strings and keys, form fields):
  PostgreSQL refuses it in text, so it would reach the database and come back as a 500.
- JSON integers within 64 bits: a 400-digit integer overflows every number type it meets later.
- JSON nesting at most MAX_DEPTH deep: the parsers and validators behind it recurse.
- No non-finite numbers (NaN, Infinity, or a literal like 1e999 that parses to infinity).

Each refusal is a 422 `validation_error` whose details name the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from service.errors import ServiceError

NUL = "\x00"
MAX_DEPTH = 64  # a job spec nests a few levels; rows of images five
MIN_INT, MAX_INT = -(2**63), 2**64 - 1  # what a 64-bit integer (signed or not) holds
MAX_INT_DIGITS = 20  # a longer literal is out of range whatever its value
NUL_MESSAGE = "a NUL character (\\u0000) is not accepted"


def refusal(field: str, message: str, kind: str) -> ServiceError:
    """A `validation_error` about one field, with details shaped like a validation failure's."""
    return ServiceError(
        "validation_error",
        f"{field}: {message}",
        [{"field": field, "message": message, "type": kind}],
    )


def nul_error(field: str) -> ServiceError:
    return refusal(field, NUL_MESSAGE, "nul_character")


def check_text(value: str | None, field: str) -> None:
    """ServiceError naming `field` when `value` holds a NUL character."""
    if value is not None and NUL in value:
        raise nul_error(field)


def bounded_int(literal: str) -> int:
    """A JSON integer literal as an int; ValueError when it does not fit in 64 bits (for the
    `parse_int` of `json.loads`, so that a huge literal is never even converted)."""
    digits = literal.lstrip("-")
    if len(digits) > MAX_INT_DIGITS or not MIN_INT <= int(literal) <= MAX_INT:
        raise ValueError(f"an integer of {len(digits)} digits does not fit in 64 bits")
    return int(literal)


def check_json(value: Any, root: str = "body") -> None:
    """ServiceError naming the first field of a parsed JSON value that holds a NUL character,
    an integer beyond 64 bits, a non-finite number, or nesting deeper than MAX_DEPTH.

    Walked with an explicit stack: deep nesting is what it looks for, so it must not recurse."""
    path: list[str | int] = []  # the keys of the containers being walked: len(stack) - 1
    stack: list[Iterator[tuple[str | int, Any]]] = [iter([(root, value)])]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            if path:
                path.pop()
            continue
        key, item = entry
        problem = _problem(item)
        if problem is None and isinstance(item, dict | list):
            if len(stack) > MAX_DEPTH:
                problem = "too_deep", f"nested deeper than {MAX_DEPTH} levels"
            else:
                path.append(key)
                stack.append(iter(item.items() if isinstance(item, dict) else enumerate(item)))
        if problem is not None:
            raise refusal(".".join(str(p) for p in [*path, key]), problem[1], problem[0])


def _problem(item: Any) -> tuple[str, str] | None:
    if isinstance(item, str):
        return ("nul_character", NUL_MESSAGE) if NUL in item else None
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        if MIN_INT <= item <= MAX_INT:
            return None
        return "integer_too_large", "an integer beyond 64 bits is not accepted"
    if isinstance(item, float):
        return None if math.isfinite(item) else ("non_finite", "non-finite numbers are refused")
    if isinstance(item, dict):
        for name in item:
            if isinstance(name, str) and NUL in name:
                return "nul_character", "a key with a NUL character (\\u0000) is not accepted"
    return None
