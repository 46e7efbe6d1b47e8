"""Run a callback as soon as the process is asked to stop, before the server's own handlers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any


def chain_exit_signals(callback: Callable[[], None]) -> Callable[[], None] | None:
    """Chain `callback` (run on the running event loop) in front of the SIGINT/SIGTERM handlers;
    the function that puts the previous handlers back, or None off the main thread.

    uvicorn waits for open responses before it runs the application's shutdown, and an event
    stream stays open until its job ends; so whatever holds streams open must hear the signal
    itself (main thread only, as signals are).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous.get(signum)
        if callable(chained):
            chained(signum, frame)
        elif chained == signal.SIG_DFL and signum == signal.SIGINT:
            raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            if signal.getsignal(signum) is handler:
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(signum, old)

    return restore
