"""What every abuse test checks after its attack: the answer's status and error envelope, the
API still answering `/healthz` quickly, and the memory the attack cost.

Memory is this test process's (the app runs in it through TestClient): `reset_peak()` clears the
kernel's high-water mark (Linux: /proc/self/clear_refs), `peak_rss()` reads it back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

HEALTHZ_BUDGET_S = 0.1


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The answer is `status` with the error envelope of `code`; its error object."""
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def assert_still_serving(client: Any) -> None:
    """`/healthz` answers 200 within HEALTHZ_BUDGET_S (best of three, the machine is noisy)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        response = client.get("/healthz")
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    assert min(times) < HEALTHZ_BUDGET_S, times


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def rss() -> int:
    """This process's resident memory now, bytes."""
    return _status_kib("VmRSS") * 1024


def reset_peak() -> None:
    """Start measuring the resident high-water mark from now."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    """The resident high-water mark since `reset_peak()`, bytes."""
    return _status_kib("VmHWM") * 1024
