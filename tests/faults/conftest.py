"""The fault tests' shared stack: API, private Redis and PostgreSQL, no worker yet (each test
starts its workers, so it knows their process ids); logs dumped when the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.servers import Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    try:
        yield stack.start(worker=False)
    finally:
        stack.dump_logs()
        stack.close()
