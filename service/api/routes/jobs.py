"""Jobs: submit, list, read, cancel."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, Response, status

from service import jobs as lifecycle
from service.api.deps import PageDep, PrincipalDep, PublisherDep, SessionDep, SettingsDep
from service.db import jobs as job_repo
from service.schemas.common import ERROR_RESPONSES, TenantFilter
from service.schemas.jobs import JobOut, JobPage, job_out, job_spec_union, openapi_examples

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

SpecBody = Annotated[job_spec_union(), Body(openapi_examples=openapi_examples())]  # type: ignore[valid-type]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Same key and body within 24 h: the same job. Another body: 409.",
    ),
]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut)
def submit_job(
    spec: SpecBody,
    session: SessionDep,
    publisher: PublisherDep,
    settings: SettingsDep,
    response: Response,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Accept a job: the row is committed as `queued` before it is published to the broker.

    If the broker cannot be reached the job is still accepted; it stays `queued` and the
    service publishes it when the broker is back.
    """
    submitted = lifecycle.submit(
        session,
        publisher,
        settings,
        spec=spec,
        principal=principal,
        idempotency_key=idempotency_key,
    )
    if submitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        response.headers["Location"] = f"/v1/jobs/{submitted.job.id}"
    return job_out(submitted.job)


@router.get("", response_model=JobPage)
def list_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    page: PageDep,
    status: Status | None = None,
    kind: str | None = None,
    tenant: TenantFilter = None,
) -> JobPage:
    """The tenant's jobs (an admin's: every tenant's), newest first; pass `next_cursor` back as
    `cursor` for the next page."""
    filters = {"status": status, "kind": kind, "tenant": tenant}
    jobs, next_cursor = job_repo.list_page(session, page, principal.scope, **filters)
    return JobPage(items=[job_out(j) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """Status, progress, timestamps, attempts, worker, device, error, result."""
    return job_out(job_repo.get(session, job_id=job_id, scope=principal.scope))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """A queued job is cancelled at once; a running one at its next report. 409 if it ended."""
    with session.begin():
        job = lifecycle.cancel(session, job_id=job_id, scope=principal.scope)
    return job_out(job)
