"""Long model work in chunks: between two chunks a request checks its deadline and its client,
and stops when either is gone, so the work of a request nobody waits for is freed. Where each
chunk runs (the API's inference threads or a model process) is `service.placement`'s choice.

Rows are independent of the rows computed with them (micro-batching already relies on it), so
a row operation's chunks are sized by time: about `CHUNK_S` at the model's measured speed, never
smaller than a micro-batch (a call on a small model is not slowed by chunking). Samples are not:
a diffusion model's draws depend on how many samples are drawn together, so `generate` chunks
have a fixed size and the same request gives the same samples. The chunks of one request draw
from one random generator, passed to the model as its seed, so a model whose draws do not
depend on the chunking (VAE, GAN) gives the very samples one call would.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from service.admission import ClientGone, Disconnected, Gate, Ticket
from service.batching import join

CHUNK_S = 0.5  # seconds of work between two checks of the deadline and the client
GENERATE_CHUNK = 512  # samples per generate call


async def run(
    gate: Gate,
    ticket: Ticket,
    *,
    operation: str,
    compute: Callable[[int, int], Awaitable[dict[str, Any]]],
    total: int,
    chunk: Callable[[], int],
    unit: int = 1,
    disconnected: Disconnected | None = None,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """`await compute(start, stop)` over `range(total)` in chunks of `chunk()` items (each
    `unit` units of the estimate); the parts joined. `prepare()` runs before each chunk, outside
    its measured time (where the chunk will run, and its model loaded there)."""
    parts: list[dict[str, Any]] = []
    sizes: list[int] = []
    done = 0
    while done < total:
        size = min(chunk(), total - done)
        if prepare is not None:
            await prepare()
        started = time.perf_counter()
        parts.append(await compute(done, done + size))
        gate.estimate(operation).update(size * unit, time.perf_counter() - started, size)
        sizes.append(size)
        done += size
        rest = gate.estimate(operation).cost((total - done) * unit)
        if ticket.started is not None and rest is not None:  # what others wait for, re-weighed
            ticket.cost = time.monotonic() - ticket.started + rest
        gate.refuse_late()  # the waiting that can no longer make their deadlines, refused now
        if done < total:
            ticket.check_deadline()
            if disconnected is not None and await disconnected():
                raise ClientGone
    return join(parts, sizes)


def row_chunk(gate: Gate, operation: str, smallest: int) -> Callable[[], int]:
    """Rows per chunk: about CHUNK_S of work at the current estimate, at least `smallest`."""

    def size() -> int:
        within = gate.estimate(operation).units_within(CHUNK_S)
        return smallest if within is None else max(smallest, within)

    return size


def generate_options(options: dict[str, Any]) -> dict[str, Any]:
    """`options` with its seed turned into one generator that every chunk draws from."""
    seed = options.get("seed")
    return {**options, "seed": np.random.default_rng(seed)}
