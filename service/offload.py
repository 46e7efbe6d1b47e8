"""Heavy model work in child processes (`THERMOML_INFERENCE_PROCESSES`, off by default): a
model that crashes in native code, runs out of memory or hangs costs a child and its request a
503, not the API process, and work past its deadline can be killed rather than waited for.

It is not a latency measure. Measured on 2 cores with a diffusion model sampling without pause
next to 16 clients scoring single rows, `/healthz` (polled from a process of its own) answered
the same wherever the sampling ran: p99 7-10 ms on the API's threads, in a child, or in a child
with one TensorFlow thread, with the machine otherwise quiet; 20-130 ms while other work loaded
the machine, no placement ahead of the others from one run to the next. A child costs a
TensorFlow runtime of its own (~0.8 GiB resident, ~0.35 GiB of it not shared with the API) and
its own loaded models.

`ModelProcesses` keeps up to `inference_processes` children, spawned (never forked: the API may
have started TensorFlow, which does not survive a fork) when a request first needs one. Each
runs `service.offload_child.main`: its own loaded-model cache over the API's cache folder, at
the lower CPU priority `inference_nice`, one call at a time. A call carries a model, an
operation and its rows or options, and brings the answer's arrays back; a random generator in
the options travels there and back, so the chunks of a request draw what they would draw in
the API.

A child that dies (killed, out of memory, a crash in native code) answers the call it was
computing `503 unavailable`, and the next call starts a new child. A call that runs
`CALL_GRACE_S` past its request's deadline has its child killed: nobody waits for that work,
and it holds a child. Loading a model (with a child's start) is let run up to `LOAD_S`: it
serves the requests that follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import pickle
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from ml.core.registry import LoadFn
from ml.core.serving import UnsupportedOperation
from service import offload_child
from service.config import Settings
from service.errors import ServiceError
from service.inference import ModelInfo
from service.offload_child import Call, Reply

log = logging.getLogger(__name__)
CALL_GRACE_S = 10.0  # seconds a call may run past its request's deadline before its child dies
# Seconds a load (a process's start: TensorFlow's import, then the model) may take, whatever
# the deadline of the request that asked for it: the model serves the requests that follow.
LOAD_S = 300.0
STOP_S = 5.0  # seconds a stopping child may take before it is killed


@dataclass
class _Child:
    """One model process (None until a call needs it, and again after it ended)."""

    process: BaseProcess | None = None
    conn: Connection | None = None
    models: set[str] = field(default_factory=set)  # cache keys it has loaded, as it last said
    forget: set[str] = field(default_factory=set)  # deleted models to drop before its next call
    busy: bool = False
    _calls: queue.SimpleQueue[tuple[Any, ...] | None] | None = None

    def submit(
        self, context: SpawnContext, settings: Settings, call: Call, wait_s: float
    ) -> asyncio.Future[Reply]:
        """`call` handed to this child's thread; its answer as a future of the running loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        if self._calls is None:
            self._calls = queue.SimpleQueue()
            threading.Thread(target=self._serve, name="thermoml-offload", daemon=True).start()
        self._calls.put((loop, future, context, settings, call, wait_s))
        return future

    def _serve(self) -> None:
        """This child's calls, one at a time, on a thread of its own that waits for the child's
        answers without the interpreter lock. A daemon: it never holds up the API's exit; and
        the child, started from it, dies with it (the parent-death signal follows the thread)."""
        assert self._calls is not None
        while (item := self._calls.get()) is not None:
            loop, future, *args = item
            try:
                settle, outcome = future.set_result, self.call(*args)
            except BaseException as exc:
                settle, outcome = future.set_exception, exc
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, settle, outcome)

    def call(self, context: SpawnContext, settings: Settings, call: Call, wait_s: float) -> Reply:
        """`call` answered by this child (started first if it is not running); blocks."""
        for attempt in (1, 2):
            if self.process is None or not self.process.is_alive():
                self._start(context, settings)
            assert self.conn is not None
            try:
                self.conn.send(call)
                if self.conn.poll(wait_s):
                    return self.conn.recv()  # type: ignore[no-any-return]
            except (EOFError, OSError) as exc:
                pid, code = self._pid(), self.stop(kill=True)
                if code == 0 and attempt == 1:
                    continue  # it left, idle, before it read the call: a new child takes it
                log.error("model process %s stopped (exit code %s) during a call", pid, code)
                raise ServiceError(
                    "unavailable",
                    f"the model process stopped (exit code {code}) while computing this "
                    "request; retry",
                    {"retry_after": 1},
                ) from exc
            log.error("model process %s: no answer within its call's deadline: killed", self._pid())
            self.stop(kill=True)
            break
        raise ServiceError(
            "unavailable",
            "the model process did not finish this work in time and was restarted; retry later "
            "or ask for less work per request",
            {"retry_after": 5},
        )

    def stop(self, *, kill: bool = False) -> int | None:
        """End the process (asked to stop, or killed); its exit code. Blocks at most 2 STOP_S."""
        process, conn = self.process, self.conn
        self.process, self.conn, self.models = None, None, set()
        if process is None:
            return None
        if kill:
            process.kill()
        elif conn is not None:
            with contextlib.suppress(OSError):
                conn.send(None)
        process.join(STOP_S)
        if process.exitcode is None:
            process.kill()
            process.join(STOP_S)
        if conn is not None:
            conn.close()
        return process.exitcode

    def retire(self) -> None:
        """End this child's thread (after the calls handed to it)."""
        if self._calls is not None:
            self._calls.put(None)

    def _start(self, context: SpawnContext, settings: Settings) -> None:
        self.stop()
        ours, theirs = context.Pipe()
        process = context.Process(
            target=offload_child.main, args=(theirs, settings), name="thermoml-model", daemon=True
        )
        process.start()
        theirs.close()
        self.process, self.conn, self.models = process, ours, set()
        self.forget.clear()  # a new child has loaded nothing
        log.info("model process %s started", process.pid)

    def _pid(self) -> int | None:
        return None if self.process is None else self.process.pid


class ModelProcesses:
    """The API's model processes: `run` one operation (or `load` a model) in one of them."""

    def __init__(self, settings: Settings) -> None:
        self.size = max(1, settings.inference_processes)
        self._settings = settings.model_copy(update={"inference_processes": 0})
        self._context = multiprocessing.get_context("spawn")
        self._children = [_Child() for _ in range(self.size)]
        self._lock = threading.Lock()
        self._free: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        weakref.finalize(self, _kill_all, self._children)

    async def load(self, info: ModelInfo, load: LoadFn | None, *, deadline: float) -> None:
        """`info`'s model loaded in a child (outside any measured call)."""
        await self._call(Call(info, load, None), deadline)

    async def run(
        self,
        info: ModelInfo,
        load: LoadFn | None,
        operation: str,
        inputs: np.ndarray | None,
        options: dict[str, Any],
        *,
        deadline: float,
    ) -> dict[str, Any]:
        """`operation` of `info`'s model in a child; the options' random generators advance as
        if the call had run here."""
        reply = await self._call(Call(info, load, operation, inputs, options), deadline)
        for name, state in reply.states.items():
            options[name].bit_generator.state = state
        assert reply.answer is not None
        return reply.answer

    def forget(self, model_id: str) -> None:
        """A deleted model: each child drops it before its next call."""
        with self._lock:
            for child in self._children:
                if any(key.startswith(f"{model_id}:") for key in child.models):
                    child.forget.add(model_id)

    def pids(self) -> list[int]:
        return [c.process.pid for c in self._children if c.process is not None and c.process.pid]

    def close(self) -> None:
        """Stop every child (blocks while they finish their calls, at most 2 STOP_S each)."""
        for child in self._children:
            child.stop()
            child.retire()

    async def _call(self, call: Call, deadline: float) -> Reply:
        free = self._semaphore()
        await free.acquire()
        try:
            child = self._take(call.info.cache_key)
            with self._lock:
                call.forget, child.forget = sorted(child.forget), set()
            wait_s = max(0.0, deadline - time.monotonic()) + CALL_GRACE_S
            if call.operation is None:
                wait_s = max(wait_s, LOAD_S)
            future = child.submit(self._context, self._settings, call, wait_s)
        except BaseException:
            free.release()
            raise
        # The child is free again when its answer is read, not when a caller gives up on it.
        future.add_done_callback(functools.partial(_done, child, free))
        reply: Reply = await asyncio.shield(future)
        if reply.error is not None:
            raise raised(reply.error)
        return reply

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._free is None or self._free[0] is not loop:
            self._free = (loop, asyncio.Semaphore(self.size))
        return self._free[1]

    def _take(self, key: str) -> _Child:
        """An idle child: one that has the model loaded, else one that runs, else any."""
        idle = [c for c in self._children if not c.busy]
        child = next((c for c in idle if key in c.models), None)
        child = child or next((c for c in idle if c.process is not None), idle[0])
        child.busy = True
        return child


def _settle(future: asyncio.Future[Reply], settle: Callable[[Any], None], outcome: Any) -> None:
    if not future.done():
        settle(outcome)


def _done(child: _Child, free: asyncio.Semaphore, future: asyncio.Future[Reply]) -> None:
    child.busy = False
    free.release()
    if not future.cancelled() and future.exception() is None:  # (marks an error as seen)
        child.models = set(future.result().loaded)


def _kill_all(children: list[_Child]) -> None:
    for child in children:
        if child.process is not None:
            child.process.kill()
        child.retire()


REBUILD: dict[str, Callable[..., Exception]] = {
    "service": ServiceError,
    "unsupported": UnsupportedOperation,
    "value": ValueError,
    "internal": RuntimeError,
}


def raised(error: tuple[str, tuple[Any, ...]]) -> Exception:
    """The exception a child sent as data (`offload_child.portable`), to raise here."""
    name, args = error
    return REBUILD[name](*args)


def portable_loader(load: LoadFn | None) -> LoadFn | None:
    """`load` when a child can import it by name (a module-level class or function), else None:
    the child then asks its own registry for the kind's loader."""
    try:
        pickle.dumps(load)
    except (pickle.PicklingError, AttributeError, TypeError):
        return None
    return load
