"""README states what the code does: its kinds table and its list of error codes are complete."""

from __future__ import annotations

import re
from pathlib import Path

from ml.core.registry import list_kinds
from service.errors import STATUS_BY_CODE

README = (Path(__file__).parent.parent / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    end = README.find("\n#", start + len(title) + 2)
    return README[start:end]


def test_the_kinds_table_is_one_table_with_every_kind() -> None:
    kinds = section("## Job kinds")
    table = kinds[kinds.index("| kind |") :]
    rows = table[: table.index("\n\n")].splitlines()  # a blank line would end (and split) it
    named = {m.group(1) for row in rows if (m := re.match(r"\| `(\w+)` \|", row))}
    assert named == set(list_kinds())


def test_every_error_code_is_listed_with_its_status() -> None:
    errors = README[README.index("Errors always have one shape") :]
    errors = errors[: errors.index("\n\n")]
    for code, status in STATUS_BY_CODE.items():
        assert re.search(rf"`{code}`[^`]*?{status}", errors), code
