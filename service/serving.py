"""Model operations on the service's side: encode, reconstruct, score, predict, generate, and
pictures, from a model reference and a request body to the answer's arrays.

An operation the model's kind does not serve is a 409 `unsupported_operation` naming what it
serves; rows that do not fit the model are a 422 naming the expected shape. Rows are raw: the
model applies its own preprocessing. Concurrent requests for one model are micro-batched
(`THERMOML_BATCHING`); every request is first admitted by its model's gate
(`service.admission`), and long work runs in chunks (`service.chunks`), heavy work in a model
process when `THERMOML_INFERENCE_PROCESSES` says so (`service.placement`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from ml.core.serving import UnsupportedOperation
from service import bodies, chunks, prom
from service.admission import Disconnected, Gate, Ticket
from service.config import Settings
from service.db.tenancy import Scope
from service.errors import ServiceError
from service.inference import ModelCache, ModelInfo, Sessions
from service.placement import Placement

# The array an operation answers with first (a `.npy` answer holds only it).
PRIMARY = {
    "encode": "latents",
    "reconstruct": "reconstructions",
    "score": "scores",
    "predict": "clusters",
    "generate": "samples",
}
ROW_OPERATIONS = ("encode", "reconstruct", "score", "predict")


async def model_info(cache: ModelCache, sessions: Sessions, ref: str, scope: Scope) -> ModelInfo:
    """What `ref` names for a caller of `scope`, from the cache's memory when it is recent (no
    thread hop)."""
    known = cache.known(ref, scope)
    if known is not None:
        return known
    return await run_in_threadpool(lambda: cache.resolve(sessions, ref, scope=scope))


def check_serves(info: ModelInfo, ref: str, operation: str) -> None:
    if operation not in info.capabilities:
        raise ServiceError(
            "unsupported_operation",
            f"model {ref!r} ({info.kind}) does not serve {operation}; it serves "
            f"{', '.join(info.capabilities) or 'nothing'}",
            {"serves": info.capabilities},
        )


async def run_rows(
    cache: ModelCache,
    sessions: Sessions,
    settings: Settings,
    *,
    ref: str,
    scope: Scope,
    operation: str,
    body: Callable[[], Awaitable[bytes]],
    content_type: str,
    key: str | None = None,
    disconnected: Disconnected | None = None,
) -> dict[str, Any]:
    """One row operation: the model resolved and checked, then the body read and shaped, then
    admitted (or refused) and computed: micro-batched when batching is on and the rows are
    light, else in chunks."""
    cache.in_flight += 1
    try:
        info = await model_info(cache, sessions, ref, scope)
        check_serves(info, ref, operation)
        raw = bodies.read_rows(await body(), content_type, max_columns=math.prod(info.input_shape))
        x = shape_rows(raw, info, settings.max_inference_rows)
        gate = cache.admission.gate(info.cache_key)
        batched = settings.batching and len(x) < settings.batch_max_rows
        ticket = gate.ticket(operation, len(x), key=key, batched=batched)
        started = time.perf_counter()
        async with admitted(gate, ticket, disconnected):
            if not ticket.needs_slot:
                answer = await _batched(cache, settings, info, operation, x)
            else:
                place = Placement(
                    cache, settings, info, gate, ticket, operation=operation, units=len(x)
                )
                answer = await chunks.run(
                    gate,
                    ticket,
                    operation=operation,
                    compute=lambda i, j: place.run(x[i:j], {}),
                    total=len(x),
                    chunk=chunks.row_chunk(gate, operation, settings.batch_max_rows),
                    disconnected=disconnected,
                    prepare=place.prepare,
                )
        prom.observe_inference(info.kind, len(x), time.perf_counter() - started)
        return answer
    finally:
        cache.in_flight -= 1


@asynccontextmanager
async def admitted(
    gate: Gate, ticket: Ticket, disconnected: Disconnected | None
) -> AsyncIterator[None]:
    """The request admitted by its model's gate, run within its deadline, then let go; the
    model's refusals as service errors."""
    await gate.enter(ticket, disconnected)
    deadline = asyncio.timeout(max(0.0, ticket.deadline - time.monotonic()))
    try:
        async with deadline:
            yield
    except TimeoutError as exc:
        if not deadline.expired():
            raise
        # The deadline, whatever time.monotonic() says: the loop's clock may run a little
        # behind it (uvloop reads it once an iteration), so its timer can fire just before.
        raise ticket.late() from exc
    except UnsupportedOperation as exc:
        raise ServiceError("unsupported_operation", str(exc)) from exc
    finally:
        gate.leave(ticket)


async def _batched(
    cache: ModelCache, settings: Settings, info: ModelInfo, operation: str, x: np.ndarray
) -> dict[str, Any]:
    batcher = cache.ready_batcher(info, operation)
    if batcher is None:  # the model is not loaded yet: loading blocks
        batcher = await cache.admission.run_sync(
            cache.batcher, info, operation, settings.batch_max_rows, settings.batch_max_wait
        )
    return await batcher.submit(x, alone=cache.in_flight == 1)


def shape_rows(raw: np.ndarray | list[Any], info: ModelInfo, limit: int) -> np.ndarray:
    """Rows as a float32 array of the model's input shape (flat rows are reshaped); 422 for
    too many rows, another shape, or a non-finite number."""
    if len(raw) > limit:
        raise ServiceError(
            "validation_error", f"{len(raw)} rows is more than the limit of {limit} per request"
        )
    expected = [int(s) for s in info.input_shape]
    try:
        x = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise ServiceError(
            "validation_error",
            f"inputs must be a list of numeric rows of shape {expected}: {exc}",
            {"expected_shape": expected},
        ) from None
    size = int(np.prod(expected)) if expected else 0
    if x.ndim == 0 or len(x) == 0:
        raise ServiceError("validation_error", "send at least one row")
    if list(x.shape[1:]) != expected:
        if x.ndim == 2 and x.shape[1] == size:
            x = x.reshape(len(x), *expected)
        else:
            raise ServiceError(
                "validation_error",
                f"each row must have shape {expected} (or {size} numbers); got rows of shape "
                f"{list(x.shape[1:])}",
                {"expected_shape": expected, "got_shape": list(x.shape[1:])},
            )
    if not np.isfinite(x).all():  # the per-row check only when one fails: it costs 10x
        bad = int(np.argmin(np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        raise ServiceError("validation_error", f"row {bad} holds a non-finite number")
    return x


async def generate(
    cache: ModelCache,
    sessions: Sessions,
    settings: Settings,
    *,
    ref: str,
    scope: Scope,
    options: dict[str, Any],
    key: str | None = None,
    disconnected: Disconnected | None = None,
) -> dict[str, Any]:
    """`options["n"]` samples (with the request's seed, sampler and steps), in chunks of
    `chunks.GENERATE_CHUNK` when there are more."""
    n = int(options["n"])
    if n > settings.max_generate:
        raise ServiceError(
            "validation_error", f"n = {n} is more than the limit of {settings.max_generate}"
        )
    info = await model_info(cache, sessions, ref, scope)
    check_serves(info, ref, "generate")
    # The estimate's unit is a sample-step: a diffusion model's cost grows with its steps.
    steps = int(options.get("steps") or info.calibration.get("timesteps") or 1)
    gate = cache.admission.gate(info.cache_key)
    ticket = gate.ticket("generate", n * steps, key=key, batched=False)
    chunked = chunks.generate_options(options) if n > chunks.GENERATE_CHUNK else options
    started = time.perf_counter()
    try:
        async with admitted(gate, ticket, disconnected):
            place = Placement(
                cache, settings, info, gate, ticket, operation="generate", units=n * steps
            )
            answer = await chunks.run(
                gate,
                ticket,
                operation="generate",
                compute=lambda i, j: place.run(None, {**chunked, "n": j - i}),
                total=n,
                chunk=lambda: chunks.GENERATE_CHUNK,
                unit=steps,
                disconnected=disconnected,
                prepare=place.prepare,
            )
    except ValueError as exc:  # options the model refuses (a sampler, steps beyond its chain)
        raise ServiceError("validation_error", str(exc)) from exc
    prom.observe_inference(info.kind, n, time.perf_counter() - started)
    return answer


async def picture(
    cache: ModelCache, sessions: Sessions, *, ref: str, scope: Scope, name: str
) -> bytes:
    """The PNG of one of the pictures the model's kind draws; 404 naming those it has."""
    info = await run_in_threadpool(lambda: cache.resolve(sessions, ref, scope=scope, fresh=True))
    if name not in info.pictures:
        raise ServiceError(
            "not_found",
            f"model {ref!r} has no picture {name!r}; it has {', '.join(info.pictures) or 'none'}",
            {"pictures": info.pictures},
        )
    servable = await cache.admission.run_sync(cache.get, info)
    draw = getattr(servable, "picture", None)
    if draw is None:
        raise ServiceError("not_found", f"model {ref!r} draws no pictures")
    return await cache.admission.run_sync(draw, name)  # type: ignore[no-any-return]
