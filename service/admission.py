"""Admission control for model operations: per model and per API process, a bounded number of
requests in flight and a bounded wait, weighed by what each request is estimated to cost.

Every request enters its model's :class:`Gate` with a :class:`Ticket` (its estimated seconds,
its deadline, its API key). A request that would pass the model's bounds is refused at once:
`503 unavailable` with a `Retry-After` when the model is full or its estimated wait would pass the
deadline, `429 rate_limited` when the caller's key already holds its share. Tickets that need a
slot (work not micro-batched) queue for one; requests estimated to cost more than
`inference_heavy_seconds` use the heavy lane, which has fewer slots than the model, so a heavy
caller leaves slots to light work. Micro-batched requests need no slot (their batcher computes
one batch at a time) but count against the bounds.

Costs come from :class:`Estimate`: the model operation's measured seconds per unit (a row, or a
sample-step for `generate`), a running estimate from its calls. Model work runs on the inference
threads (`run_sync`), never on the thread pool that sync routes and health checks share.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from service.config import Settings
from service.errors import ServiceError

T = TypeVar("T")
Disconnected = Callable[[], Awaitable[bool]]
POLL_S = 0.2  # how often a queued request checks its client and deadline
SMALL_CALL_ROWS = 8  # calls on fewer units measure the fixed cost, larger ones the slope
SMOOTHING = 0.3  # weight of the newest measurement in the running estimates
UNKNOWN_HEAVY_UNITS = 1024  # before any measurement, work on more units (a micro-batch) is heavy


class ClientGone(ServiceError):
    """The client disconnected: its request is dropped, its work stopped (nobody reads the
    answer, but it is logged as one)."""

    def __init__(self) -> None:
        super().__init__("unavailable", "the client disconnected; its request was dropped")


@dataclass
class Estimate:
    """Seconds one model operation takes: a fixed cost per call plus a cost per unit, each a
    running mean of measured calls (small calls measure the first, large ones the second)."""

    per_call: float | None = None
    per_unit: float | None = None

    def update(self, units: int, seconds: float, items: int | None = None) -> None:
        """A measured call on `items` rows or samples (`units` units of work; the same number
        unless each item is several units, as a sample is `steps` units for `generate`)."""
        if (units if items is None else items) < SMALL_CALL_ROWS:
            self.per_call = _smooth(self.per_call, seconds)
        else:
            self.per_unit = _smooth(self.per_unit, seconds / units)

    def cost(self, units: int) -> float | None:
        """Estimated seconds for `units`, or None until a call on enough items was measured.

        Not extrapolated from small calls: a call on one sample or row costs about as much as
        one on dozens (the work is vectorised), so a cost per unit taken from it would overstate
        a large request many times and refuse it for a deadline it would meet."""
        if self.per_unit is not None:
            return units * self.per_unit
        return None

    def units_within(self, seconds: float) -> int | None:
        """How many units take about `seconds`; None before any measurement."""
        per_unit = self.per_unit if self.per_unit is not None else self.per_call
        return None if not per_unit else max(1, int(seconds / per_unit))


def _smooth(old: float | None, new: float) -> float:
    return new if old is None else (1 - SMOOTHING) * old + SMOOTHING * new


@dataclass(eq=False)
class Ticket:
    """One request in a gate: admitted, then running or waiting for a slot."""

    cost: float  # estimated seconds (0 when not yet known)
    deadline: float  # time.monotonic() past which the request answers 503
    key: str | None = None  # the caller's API key id (None: auth disabled)
    heavy: bool = False
    needs_slot: bool = True
    started: float | None = None
    ready: asyncio.Future[None] | None = None

    def remaining(self, now: float) -> float:
        if self.started is None:
            return self.cost
        return max(0.0, self.cost - (now - self.started))

    def check_deadline(self) -> None:
        if time.monotonic() >= self.deadline:
            raise self.late()

    def late(self) -> ServiceError:
        """The answer of a request past its deadline."""
        return ServiceError(
            "unavailable",
            "the model did not answer within the inference time limit; retry later or ask "
            "for less work per request",
            {"retry_after": 5},
        )


@dataclass(frozen=True)
class Limits:
    concurrency: int
    queue: int
    heavy_concurrency: int
    heavy_seconds: float
    key_share: float
    timeout: float

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            concurrency=settings.inference_concurrency,
            queue=settings.inference_queue,
            heavy_concurrency=min(
                settings.inference_heavy_concurrency, settings.inference_concurrency
            ),
            heavy_seconds=settings.inference_heavy_seconds,
            key_share=settings.inference_key_share,
            timeout=settings.inference_timeout,
        )

    @property
    def admitted(self) -> int:
        return self.concurrency + self.queue

    @property
    def per_key(self) -> int:
        return max(1, math.floor(self.key_share * self.admitted))


@dataclass
class Gate:
    """One model's requests in this process."""

    limits: Limits
    estimates: dict[str, Estimate] = field(default_factory=dict)
    admitted: list[Ticket] = field(default_factory=list)
    waiting: deque[Ticket] = field(default_factory=deque)

    def estimate(self, operation: str) -> Estimate:
        return self.estimates.setdefault(operation, Estimate())

    def ticket(self, operation: str, units: int, *, key: str | None, batched: bool) -> Ticket:
        """A ticket for `units` of `operation`, its cost from the running estimate (unknown
        costs: heavy when the work is larger than a micro-batch would be)."""
        cost = self.estimate(operation).cost(units)
        heavy = (
            cost > self.limits.heavy_seconds if cost is not None else units > UNKNOWN_HEAVY_UNITS
        )
        deadline = time.monotonic() + self.limits.timeout
        return Ticket(cost or 0.0, deadline, key, heavy, needs_slot=heavy or not batched)

    async def enter(self, ticket: Ticket, disconnected: Disconnected | None = None) -> None:
        """Admit `ticket` (or refuse it now) and return when it may run."""
        self._refuse_beyond_bounds(ticket)
        self.admitted.append(ticket)
        if not ticket.needs_slot:
            ticket.started = time.monotonic()
            return
        ticket.ready = asyncio.get_running_loop().create_future()
        self.waiting.append(ticket)
        self._start_waiting()
        if ticket.ready.done():
            return
        try:
            await self._wait(ticket, disconnected)
            if disconnected is not None and await disconnected():  # gone while it waited
                raise ClientGone
        except BaseException:
            self.leave(ticket)
            raise

    def leave(self, ticket: Ticket) -> None:
        """The request ended (answered, refused, timed out or dropped): free what it held."""
        if ticket in self.admitted:
            self.admitted.remove(ticket)
        if ticket in self.waiting:
            self.waiting.remove(ticket)
        if ticket.ready is not None and not ticket.ready.done():
            ticket.ready.cancel()
        self._start_waiting()

    def refuse_late(self) -> None:
        """Re-weigh the waiting tickets (after a measured call, and after the running ticket
        that made it was re-weighed: what they wait for)."""
        now = time.monotonic()
        for ticket in list(self.waiting):  # refuse now what can no longer make its deadline
            late = now + self._wait_for(ticket, now) + ticket.cost > ticket.deadline
            if late and ticket.ready is not None and not ticket.ready.done():
                ticket.ready.set_exception(self._full(ticket, now))

    def _refuse_beyond_bounds(self, ticket: Ticket) -> None:
        now = time.monotonic()
        if ticket.key is not None:
            held = sum(1 for t in self.admitted if t.key == ticket.key)
            if held >= self.limits.per_key:
                raise ServiceError(
                    "rate_limited",
                    f"this API key already has {held} requests in flight for this model, its "
                    f"share; wait for one to answer",
                    {"retry_after": self._retry_after(self._wait_for(ticket, now))},
                )
        if len(self.admitted) >= self.limits.admitted:
            raise self._full(ticket, now)
        if ticket.needs_slot and now + self._wait_for(ticket, now) + ticket.cost > ticket.deadline:
            raise self._full(ticket, now)

    def _full(self, ticket: Ticket, now: float) -> ServiceError:
        wait = self._wait_for(ticket, now)
        return ServiceError(
            "unavailable",
            "the model is busy: this request would wait past the inference time limit"
            if ticket.cost and wait
            else "the model is busy: too many requests in flight; retry later",
            {"retry_after": self._retry_after(wait), "estimated_wait_s": round(wait, 1)},
        )

    def _retry_after(self, wait: float) -> int:
        return max(1, min(math.ceil(wait), math.ceil(self.limits.timeout)))

    def _wait_for(self, ticket: Ticket, now: float) -> float:
        """Estimated seconds before `ticket` would start: the work ahead of it in its lane."""
        lane = [t for t in self.admitted if t.needs_slot and t is not ticket]
        if ticket in self.waiting:
            ahead = set(list(self.waiting)[: self.waiting.index(ticket)])
            lane = [t for t in lane if t.started is not None or t in ahead]
        if ticket.heavy:
            lane = [t for t in lane if t.heavy]
            slots = self.limits.heavy_concurrency
        else:
            slots = self.limits.concurrency
        if len(lane) < slots:
            return 0.0
        return sum(t.remaining(now) for t in lane) / slots

    def _running(self, heavy: bool = False) -> int:
        return sum(
            1
            for t in self.admitted
            if t.needs_slot and t.started is not None and (t.heavy or not heavy)
        )

    def _can_start(self, ticket: Ticket) -> bool:
        if self._running() >= self.limits.concurrency:
            return False
        return not ticket.heavy or self._running(heavy=True) < self.limits.heavy_concurrency

    def _start_waiting(self) -> None:
        for ticket in list(self.waiting):  # in order; light tickets pass a blocked heavy one
            if ticket.ready is not None and ticket.ready.done():
                continue
            if self._can_start(ticket):
                self.waiting.remove(ticket)
                ticket.started = time.monotonic()
                if ticket.ready is not None:
                    ticket.ready.set_result(None)

    async def _wait(self, ticket: Ticket, disconnected: Disconnected | None) -> None:
        assert ticket.ready is not None
        while True:
            timeout = min(POLL_S, max(0.0, ticket.deadline - time.monotonic()))
            await asyncio.wait({ticket.ready}, timeout=timeout)
            if ticket.ready.done():
                ticket.ready.result()  # raises a refusal set by `refuse_late`
                return
            ticket.check_deadline()
            if disconnected is not None and await disconnected():
                raise ClientGone


class Admission:
    """The gates of this process's models, and the inference threads: `inference_threads` for
    light work and half as many more for heavy work, so that heavy requests to many models at
    once still leave threads to light ones.

    The threads are the process's own and run at a lower CPU priority (`inference_nice`): on a
    machine whose cores inference saturates, the event loop (health checks, reads, admission
    answers) is scheduled first. TensorFlow's own worker threads, started from an inference
    thread when the first model loads, inherit it."""

    def __init__(self, settings: Settings) -> None:
        self.limits = Limits.of(settings)
        self.gates: dict[str, Gate] = {}
        heavy = max(1, settings.inference_threads // 2)
        self.threads = anyio.CapacityLimiter(settings.inference_threads)
        self.heavy_threads = anyio.CapacityLimiter(heavy)
        nice = settings.inference_nice
        self._pool = ThreadPoolExecutor(
            settings.inference_threads + heavy,
            thread_name_prefix="thermoml-inference",
            initializer=_lower_priority,
            initargs=(nice,),
        )

    def gate(self, model_key: str) -> Gate:
        gate = self.gates.get(model_key)
        if gate is None:
            gate = self.gates[model_key] = Gate(self.limits)
        return gate

    def forget(self, model_id: str) -> None:
        for key in [k for k in self.gates if k.startswith(f"{model_id}:")]:
            del self.gates[key]

    async def run_sync(self, fn: Callable[..., T], *args: Any, heavy: bool = False) -> T:
        """`fn(*args)` on an inference thread (a cancelled caller still waits for it)."""
        limiter = self.heavy_threads if heavy else self.threads
        async with limiter:
            future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
            with anyio.CancelScope(shield=True):
                return await future


def _lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority by `nice` (Linux: a thread is a task of its own)."""
    if nice:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
