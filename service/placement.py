"""Where the chunks of one model request run: on the API's inference threads, or, when model
processes are on (`THERMOML_INFERENCE_PROCESSES`), in one of them (`service.offload`) once the
request is priced heavy.

A request of unknown cost (its model's operation never measured in this process) starts on the
threads: its first chunk measures it, and work that turns out cheap (most of it) never pays for
a process's start. Once the request is priced above `inference_heavy_seconds` its chunks go to
a model process and stay there. `prepare` runs before each chunk, outside its measured time,
and loads the model where the chunk will run (in the API only if a chunk runs there).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ml.core.registry import LoadFn, get_kind
from ml.core.serving import Servable
from service.admission import Gate, Ticket
from service.config import Settings
from service.inference import ModelCache, ModelInfo
from service.offload import ModelProcesses, portable_loader


class Placement:
    """One request's chunks, each run where `prepare` last put the request."""

    def __init__(
        self,
        cache: ModelCache,
        settings: Settings,
        info: ModelInfo,
        gate: Gate,
        ticket: Ticket,
        *,
        operation: str,
        units: int,
    ) -> None:
        self.cache, self.info, self.gate, self.ticket = cache, info, gate, ticket
        self.operation, self.units = operation, units
        self.processes = model_processes(cache, settings)
        self.servable: Servable | None = None
        self.offloaded = False
        self._load: LoadFn | None = None

    def priced_heavy(self) -> bool:
        """In the heavy lane, and measured to cost more than a heavy request's bound."""
        cost = self.gate.estimate(self.operation).cost(self.units)
        return self.ticket.heavy and cost is not None and cost > self.gate.limits.heavy_seconds

    async def prepare(self) -> None:
        if self.processes is not None and not self.offloaded and self.priced_heavy():
            self.offloaded = True
            self._load = portable_loader(get_kind(self.info.kind).load)
            await self.processes.load(self.info, self._load, deadline=self.ticket.deadline)
        elif not self.offloaded and self.servable is None:
            self.servable = await self.cache.admission.run_sync(self.cache.get, self.info)

    async def run(self, inputs: np.ndarray | None, options: dict[str, Any]) -> dict[str, Any]:
        """One chunk: `operation` on `inputs` (rows) with `options`, where it was placed."""
        if self.offloaded:
            assert self.processes is not None
            deadline = self.ticket.deadline
            return await self.processes.run(
                self.info, self._load, self.operation, inputs, options, deadline=deadline
            )
        servable = self.servable
        assert servable is not None, "prepare() places a chunk before it runs"
        return await self.cache.admission.run_sync(
            lambda: servable.run(self.operation, inputs, **options), heavy=self.ticket.heavy
        )


def model_processes(cache: ModelCache, settings: Settings) -> ModelProcesses | None:
    """The cache's model processes (none started yet), or None when heavy work stays in the
    API (`inference_processes` = 0)."""
    if settings.inference_processes < 1:
        return None
    if not isinstance(cache.processes, ModelProcesses):
        cache.processes = ModelProcesses(settings)
    return cache.processes
