"""Drift tests on the service's side: rows in any body format against the reference sample of a
model that serves `score` (`ml.anomaly.drift`).

The request goes the way a `score` request does (`service.serving`): the model resolved for the
caller's tenant and checked to serve `score`, the body read and shaped within the rows limit,
then admitted by the model's gate and computed within its deadline. A model trained before
reference samples were kept is a 409 `invalid_state` that says to train it again. The test is
one computation over the whole batch (never micro-batched or split in chunks); it runs on the
inference threads, on the reference sample alone: the model cache keeps it as an entry of its
own, loaded from the sample's file without the model's network.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ml.anomaly.drift import (
    MMD_ROWS,
    OPERATION,
    REFERENCE,
    REFERENCE_ROWS,
    BeyondScaling,
    DriftServable,
)
from ml.core.serving import Servable
from service import bodies, prom, serving
from service.admission import Disconnected
from service.config import Settings
from service.db.tenancy import Scope
from service.errors import ServiceError
from service.inference import ModelCache, ModelInfo, Sessions

SERVED_WITH = "score"  # the models that serve it keep a reference sample
WORK_UNIT = 1_000_000  # the admission estimate's unit: a million kernel values times labellings


async def run(
    cache: ModelCache,
    sessions: Sessions,
    settings: Settings,
    *,
    ref: str,
    scope: Scope,
    body: Callable[[], Awaitable[bytes]],
    content_type: str,
    options: dict[str, Any],
    key: str | None = None,
    disconnected: Disconnected | None = None,
) -> dict[str, Any]:
    """The drift answer for the rows of the request's body, with `options` (permutations,
    alpha, seed) for `ml.anomaly.drift.drift_test`."""
    cache.in_flight += 1
    try:
        info = await serving.model_info(cache, sessions, ref, scope)
        serving.check_serves(info, ref, SERVED_WITH)
        if REFERENCE not in info.files:
            raise ServiceError(
                "invalid_state",
                f"model {ref!r} was trained before models kept a reference sample of their "
                "training rows: train it again to test drift against it",
                {"reference_sample": False},
            )
        raw = bodies.read_rows(await body(), content_type, max_columns=math.prod(info.input_shape))
        x = serving.shape_rows(raw, info, settings.max_inference_rows)
        if len(x) < 2:
            raise ServiceError("validation_error", "a drift test needs at least 2 rows")
        gate = cache.admission.gate(info.cache_key)
        units = work_units(len(x), int(options["permutations"]))
        ticket = gate.ticket(OPERATION, units, key=key, batched=False)
        started = time.perf_counter()
        # The very admission, deadline and refusals of the row operations.
        async with serving.admitted(gate, ticket, disconnected):
            test = await cache.admission.run_sync(load, cache, info)
            computing = time.perf_counter()  # the estimate measures the test, not the load
            try:
                answer = await cache.admission.run_sync(
                    lambda: test.run(OPERATION, x, **options), heavy=ticket.heavy
                )
            except BeyondScaling as exc:
                raise ServiceError("validation_error", str(exc)) from None
            gate.estimate(OPERATION).update(units, time.perf_counter() - computing, len(x))
        prom.observe_inference(info.kind, len(x), time.perf_counter() - started)
        return answer
    finally:
        cache.in_flight -= 1


def work_units(rows: int, permutations: int) -> int:
    """What a test costs, in `WORK_UNIT`s: the pooled kernel matrix times the labellings."""
    pooled = min(rows, MMD_ROWS) + REFERENCE_ROWS
    return max(1, pooled * pooled * (permutations + 1) // WORK_UNIT)


def reference_info(info: ModelInfo) -> ModelInfo:
    """The model cache's entry of a model's reference sample: the sample's file alone, under a
    key of its own (`<model id>:<sha256>+drift`, let go with the model's when it is deleted)."""
    return dataclasses.replace(
        info, sha256=f"{info.sha256}+{OPERATION}", files={REFERENCE: info.files[REFERENCE]}
    )


def load(cache: ModelCache, info: ModelInfo) -> Servable:
    """The loaded reference sample of the model `info`."""
    return cache.get(reference_info(info), load=DriftServable)
