"""Data sets: the built-ins, uploads (CSV, NPY, NPZ, Parquet), their statistics, deletion."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from starlette.concurrency import run_in_threadpool

from service import datasets
from service.api import uploads
from service.api.deps import PageDep, PrincipalDep, SessionDep, SettingsDep, StoreDep
from service.errors import ServiceError
from service.schemas.common import ERROR_RESPONSES, ErrorBody, TenantFilter
from service.schemas.datasets import (
    DatasetDetail,
    DatasetOut,
    DatasetPage,
    detail_out,
    item_out,
    upload_out,
)

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=ERROR_RESPONSES)

MAX_NAME = 200
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "CSV with a header row, .npy, .npz (arrays x and "
                            "optional y) or .parquet; numeric and finite.",
                        },
                        "name": {"type": "string", "description": "A label; default: file name."},
                        "label_column": {
                            "type": "string",
                            "description": "CSV/Parquet: the column holding labels.",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {"model": DatasetOut, "description": "The same content was already uploaded"},
        413: {
            "model": ErrorBody,
            "description": "Larger than THERMOML_MAX_UPLOAD_BYTES, or decoding to more than "
            "THERMOML_MAX_DATASET_BYTES",
        },
    },
)
async def upload_dataset(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    response: Response,
    principal: PrincipalDep,
) -> DatasetOut:
    """Upload a data set as multipart fields `file`, `name`, `label_column`.

    The file is checked (decoded size, numeric, finite, rectangular) before it is stored;
    uploading the same content again answers 200 with the data set already stored.
    """
    upload = await uploads.receive(
        request, limit=settings.max_upload_bytes, folder=settings.data_dir.resolve() / "tmp"
    )
    try:
        name = upload.fields.get("name")
        if name is not None and len(name) > MAX_NAME:
            raise ServiceError("validation_error", f"name is longer than {MAX_NAME} characters")
        assert upload.file is not None
        row, created = await run_in_threadpool(
            datasets.ingest,
            request.app.state.sessions,
            store,
            upload.file,
            name=name,
            label_column=upload.fields.get("label_column"),
            max_bytes=settings.max_dataset_bytes,
            tenant=principal.tenant,
        )
    finally:
        upload.discard()
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return upload_out(row)


@router.get("", response_model=DatasetPage)
def list_datasets(
    session: SessionDep, page: PageDep, principal: PrincipalDep, tenant: TenantFilter = None
) -> DatasetPage:
    """The built-ins (`builtin:<name>`, shared by every tenant) first, then the tenant's uploads
    (an admin's: every tenant's), newest first."""
    items, next_cursor = datasets.list_page(
        session, limit=page.limit, cursor=page.cursor, scope=principal.scope, tenant=tenant
    )
    return DatasetPage(items=[item_out(i) for i in items], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetDetail)
def get_dataset(dataset_id: str, session: SessionDep, principal: PrincipalDep) -> DatasetDetail:
    """Shape and labels, per-feature mean/std/min/max (first 64 features) and the first rows."""
    item, summary = datasets.describe(session, dataset_id, scope=principal.scope)
    return detail_out(item_out(item), summary)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(
    dataset_id: str, session: SessionDep, store: StoreDep, principal: PrincipalDep
) -> Response:
    """Remove the data set and its stored file; 409 while a queued or running job uses it."""
    datasets.delete(session, store, dataset_id, scope=principal.scope)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
