"""Adaptive micro-batching of inference requests.

Requests for one (model, operation) queue up while the model computes; when it is free, the
waiting rows (up to `max_rows`) run as one compiled call and the answers are split back. Under
light load a request runs at once (a batch of one); under heavy load batches grow by themselves.
`max_wait_s` > 0 additionally holds a lone request back that long for company.

A lone request (the caller says no other is in flight) to a model whose last call, on at least
as many rows, took less than `INLINE_BELOW_S` runs on the event loop itself: handing it to a
worker thread and back costs 0.1-0.3 ms, a large share of such a call (a 1 000-row call to a
small model takes ~1 ms). Under concurrency requests always take the batching path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

Compute = Callable[[np.ndarray], dict[str, Any]]
Observe = Callable[[int, float], None]  # (rows, seconds) of every compute
INLINE_BELOW_S = 0.002


@dataclass
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[dict[str, Any]]


@dataclass
class Batcher:
    compute: Compute
    max_rows: int
    max_wait_s: float
    queue: list[_Pending] = field(default_factory=list)
    busy: bool = False
    batches: int = 0
    rows: int = 0
    last_call_s: float | None = None  # how long the last compute took
    last_call_rows: int = 0  # on how many rows
    # Runs a compute on a thread: `run_sync(fn, rows)` (None: AnyIO's default threads).
    run_sync: Callable[..., Awaitable[Any]] | None = None
    observe: Observe | None = None

    async def submit(self, rows: np.ndarray, *, alone: bool = False) -> dict[str, Any]:
        if len(rows) >= self.max_rows:  # already a batch: nothing to gain by waiting
            return await self._on_thread(self.compute, rows)  # type: ignore[no-any-return]
        if alone and len(rows) <= self.last_call_rows and self._quick_and_idle():
            return self._timed(rows)  # no await: nothing else runs on the loop meanwhile
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.queue.append(_Pending(rows, future))
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.queue:
                if self.max_wait_s > 0 and self._queued_rows() < self.max_rows:
                    deadline = time.monotonic() + self.max_wait_s
                    while self._queued_rows() < self.max_rows and time.monotonic() < deadline:
                        await asyncio.sleep(min(0.0005, self.max_wait_s))
                batch = self._take()
                await self._run(batch)
        finally:
            self.busy = False

    def _quick_and_idle(self) -> bool:
        return (
            not self.busy
            and not self.queue
            and self.max_wait_s == 0
            and self.last_call_s is not None
            and self.last_call_s < INLINE_BELOW_S
        )

    def _timed(self, rows: np.ndarray) -> dict[str, Any]:
        started = time.perf_counter()
        answer = self.compute(rows)
        self.last_call_s = time.perf_counter() - started
        self.last_call_rows = len(rows)
        if self.observe is not None:
            self.observe(len(rows), self.last_call_s)
        self.batches += 1
        self.rows += len(rows)
        return answer

    async def _in_thread(self, rows: np.ndarray) -> dict[str, Any]:
        return await self._on_thread(self._timed, rows)  # type: ignore[no-any-return]

    async def _on_thread(self, fn: Callable[..., Any], rows: np.ndarray) -> Any:
        if self.run_sync is not None:
            return await self.run_sync(fn, rows)
        return await anyio.to_thread.run_sync(fn, rows)

    def _queued_rows(self) -> int:
        return sum(len(p.rows) for p in self.queue)

    def _take(self) -> list[_Pending]:
        taken, total = [], 0
        while self.queue and (not taken or total + len(self.queue[0].rows) <= self.max_rows):
            pending = self.queue.pop(0)
            taken.append(pending)
            total += len(pending.rows)
        return taken

    async def _run(self, batch: list[_Pending]) -> None:
        batch = [p for p in batch if not p.future.cancelled()]
        if not batch:
            return
        sizes = [len(p.rows) for p in batch]
        rows = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        try:
            answer = await self._in_thread(rows)
        except Exception as exc:  # every request of the batch gets the error
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        for pending, part in zip(batch, split(answer, sizes), strict=True):
            if not pending.future.done():
                pending.future.set_result(part)


def join(parts: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """The inverse of `split`: per-row arrays of the parts concatenated, other values the first
    part's."""
    if len(parts) == 1:
        return parts[0]
    joined: dict[str, Any] = {}
    for key, value in parts[0].items():
        per_row = isinstance(value, np.ndarray) and value.ndim > 0 and value.shape[0] == sizes[0]
        joined[key] = np.concatenate([part[key] for part in parts]) if per_row else value
    return joined


def split(answer: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """Cut every per-row array of `answer` into `sizes`; other values go to every part."""
    if len(sizes) == 1:
        return [answer]
    total = sum(sizes)
    bounds = np.cumsum([0, *sizes])
    parts: list[dict[str, Any]] = [{} for _ in sizes]
    for key, value in answer.items():
        per_row = isinstance(value, np.ndarray) and value.ndim > 0 and value.shape[0] == total
        for i, part in enumerate(parts):
            part[key] = value[bounds[i] : bounds[i + 1]] if per_row else value
    return parts
