"""Job specs (a discriminated union on `kind`, built from the registry) and job resources."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError

from ml.core.registry import get_kind, list_kinds
from ml.core.spec import JobSpec
from service.inputs import check_json
from service.schemas.common import TenantField


def _out_of_range_is_invalid(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A spec whose numbers overflow a kind's own checks (e.g. `duration / dt` with a denormal
    `dt`) is invalid input, answered 422, not a server error. And before the kind's own
    checks: no NUL, no integer past 64 bits, no deep nesting anywhere in the spec."""
    check_json(value)  # ServiceError (422) naming the field: passes through pydantic as it is
    try:
        return handler(value)
    except ArithmeticError as exc:
        raise PydanticCustomError(
            "value_error", "a number in the spec is out of range ({error})", {"error": str(exc)}
        ) from exc


def job_spec_union() -> Any:
    """`Annotated[Union[<every kind's spec>], discriminator="kind"]`, of the kinds registered now:
    a kind registered or removed later (tests do both) is in, or out of, the next answer."""
    return _union(tuple(get_kind(name).spec for name in list_kinds()))


@lru_cache
def _union(kind_specs: tuple[type[JobSpec], ...]) -> Any:
    guard = WrapValidator(_out_of_range_is_invalid)
    specs = tuple(Annotated[spec, guard] for spec in kind_specs)
    if len(specs) == 1:
        return specs[0]
    return Annotated[Union[specs], Field(discriminator="kind")]  # noqa: UP007


def openapi_examples() -> dict[str, dict[str, Any]]:
    """One runnable example per kind, for the "Try it out" button of /docs."""
    return {
        name: {"summary": get_kind(name).summary, "value": get_kind(name).spec.example}
        for name in list_kinds()
    }


class JobError(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    id: str
    kind: str
    name: str
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    progress: dict[str, Any]
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    attempts: int
    worker: str | None
    device: str | None
    queue: str
    priority: int
    cancel_requested: bool
    error: JobError | None
    model_id: str | None
    result: dict[str, Any] | None
    spec: dict[str, Any]
    tenant: TenantField


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class Series(BaseModel):
    steps: list[int]
    values: list[float | None]


class MetricsOut(BaseModel):
    job_id: str
    series: dict[str, Series]


def job_out(job: Any) -> JobOut:
    error = (
        JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    )
    return JobOut(
        id=job.id,
        kind=job.kind,
        name=job.name,
        status=job.status,
        progress=job.progress or {},
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        attempts=job.attempts,
        worker=job.worker,
        device=job.device,
        queue=job.queue,
        priority=job.priority,
        cancel_requested=job.cancel_requested,
        error=error,
        model_id=job.model_id,
        result=job.result,
        spec=job.spec,
        tenant=job.tenant,
    )


__all__ = ["JobOut", "JobPage", "JobSpec", "MetricsOut", "job_out", "job_spec_union"]
