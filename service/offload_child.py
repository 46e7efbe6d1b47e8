"""What a model process runs (see `service.offload`): calls from the API over a pipe, answered
one at a time from the process's own loaded-model cache, until the API closes the pipe, says
stop, or sends nothing for `IDLE_S` seconds (the process then exits and gives its memory back).

The process loads models as the API does (`ModelCache`, over the same cache folder, with the
same bounds), at the lower CPU priority `inference_nice`. Its errors travel back as data and are
raised again in the API as the same errors: a `ServiceError` keeps its code, an operation the
model does not serve stays `UnsupportedOperation`, options the model refuses stay `ValueError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ml.core.registry import LoadFn
from ml.core.serving import UnsupportedOperation
from service.config import Settings
from service.errors import ServiceError
from service.inference import ModelCache, ModelInfo
from service.storage import ArtifactStore

log = logging.getLogger(__name__)
IDLE_S = 300.0  # seconds without a call after which the process exits
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class Call:
    """One model call: `operation` on `inputs` (rows) with `options`; None only loads the model.
    `forget` names deleted models to drop first."""

    info: ModelInfo
    load: LoadFn | None  # the kind's loader when it travels by name, else the registry's
    operation: str | None
    inputs: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)
    forget: list[str] = field(default_factory=list)


@dataclass
class Reply:
    answer: dict[str, Any] | None = None
    # The options' random generators after the call, so the caller's next chunk draws on.
    states: dict[str, Any] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)  # the models now loaded (cache keys)
    error: tuple[str, tuple[Any, ...]] | None = None


def main(conn: Connection, settings: Settings) -> None:
    _detach()
    with contextlib.suppress(OSError):
        os.nice(settings.inference_nice)
    cache = ModelCache(settings, ArtifactStore.from_settings(settings))
    while True:
        try:
            if not conn.poll(IDLE_S):
                return
            call = conn.recv()
        except (EOFError, OSError):
            return  # the API is gone
        except Exception as exc:  # a call that cannot be read here (a loader it cannot import)
            call = exc
        if call is None:
            return
        reply = answer(cache, call) if isinstance(call, Call) else Reply(error=portable(call))
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return


def answer(cache: ModelCache, call: Call) -> Reply:
    for model_id in call.forget:
        cache.discard(model_id)
    try:
        servable = cache.get(call.info, load=call.load)
        result = None
        if call.operation is not None:
            result = servable.run(call.operation, call.inputs, **call.options)
    except Exception as exc:
        return Reply(loaded=cache.loaded, error=portable(exc))
    states = {
        name: value.bit_generator.state
        for name, value in call.options.items()
        if isinstance(value, np.random.Generator)
    }
    return Reply(result, states, cache.loaded)


def portable(exc: BaseException) -> tuple[str, tuple[Any, ...]]:
    """`exc` as data that any process can read back (see `service.offload.raised`)."""
    if isinstance(exc, ServiceError):
        return "service", (exc.code, exc.message, exc.details)
    if isinstance(exc, UnsupportedOperation):
        return "unsupported", (exc.operation, exc.serves)
    if isinstance(exc, ValueError):
        return "value", (str(exc),)
    log.error("model process: %s", type(exc).__name__, exc_info=exc)
    return "internal", (f"{type(exc).__name__}: {exc}",)


def _detach() -> None:
    """Ctrl-C in the API's terminal is for the API (which stops this process), and this process
    dies with the API even when the API cannot say so (Linux: the parent-death signal)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
