"""Jobs that cannot fit are refused at submit: the kind's estimate of its parameters and peak
memory (`JobSpec.size_estimate`, pure arithmetic) against `THERMOML_MAX_MODEL_PARAMS` and
`THERMOML_JOB_MEMORY_BYTES`; 422 naming the field that costs the most, with the estimate."""

from __future__ import annotations

from typing import Any

from ml.core.sizing import SizeEstimate
from ml.core.spec import JobSpec
from service.config import Settings
from service.errors import ServiceError


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def check(spec: JobSpec, shape: tuple[int, ...], settings: Settings) -> None:
    """Refuse (422) a job whose estimate on a data set of `shape` passes a limit."""
    if len(shape) < 1:
        return
    estimate = spec.size_estimate(shape[0], tuple(shape[1:]) or (1,))
    if estimate is None:
        return
    params, memory = estimate.total_parameters, estimate.total_memory
    if params > settings.max_model_params:
        name = estimate.costliest(estimate.parameters)
        message = (
            f"the model would have {params:,} parameters (estimated from the spec and the data "
            f"set's shape {list(shape)}), over the limit of {settings.max_model_params:,} "
            "(THERMOML_MAX_MODEL_PARAMS); most of them come from "
            f"{name}: make it smaller"
        )
        _refuse(name, message, estimate, "too_many_parameters", settings)
    if memory > settings.job_memory_bytes:
        name = estimate.costliest({k: v for k, v in estimate.memory.items() if k != "runtime"})
        message = (
            f"training would need about {_gib(memory)} of memory (estimated from the spec and the "
            f"data set's shape {list(shape)}), over a job's {_gib(settings.job_memory_bytes)} "
            f"(THERMOML_JOB_MEMORY_BYTES); most of it is for {name}: make it smaller"
        )
        _refuse(name, message, estimate, "too_much_memory", settings)


def _refuse(name: str, message: str, estimate: SizeEstimate, kind: str, settings: Settings) -> None:
    field = f"body.{name}"
    detail: dict[str, Any] = {
        "field": field,
        "message": message,
        "type": kind,
        "estimate": {
            **estimate.as_dict(),
            "parameters_by_field": {f"body.{k}": v for k, v in estimate.parameters.items()},
            "memory_bytes_by_field": {f"body.{k}": v for k, v in estimate.memory.items()},
        },
        "limits": {
            "max_model_params": settings.max_model_params,
            "job_memory_bytes": settings.job_memory_bytes,
        },
    }
    raise ServiceError("validation_error", f"{field}: {message}", [detail])
