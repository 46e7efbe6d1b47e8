"""The pool process's watch over a job process ends when the process exits, not at the next
memory poll: a worker is free for its next job the moment the job's process is gone."""

from __future__ import annotations

import os
import signal
import time

from workers import isolation


def child_exiting_after(seconds: float, code: int) -> int:
    pid = os.fork()
    if pid == 0:
        time.sleep(seconds)
        os._exit(code)
    return pid


def test_the_watch_returns_when_the_process_exits_not_a_poll_later() -> None:
    pid = child_exiting_after(0.2, 3)
    started = time.monotonic()
    status = isolation._watch(pid, limit=1 << 50, interval=120.0)
    waited = time.monotonic() - started
    assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3
    assert waited < 60, f"the watch slept through its poll interval ({waited:.1f} s)"


def test_the_watch_still_kills_a_process_past_its_memory_limit() -> None:
    pid = child_exiting_after(120.0, 0)
    started = time.monotonic()
    assert isolation._watch(pid, limit=1, interval=0.05) is None  # any process is over 1 byte
    assert time.monotonic() - started < 60
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the process over its limit was not killed")
