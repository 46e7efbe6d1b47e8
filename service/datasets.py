"""Data sets on the service's side: references, uploads into the store, loading for jobs.

A reference is `builtin:<name>` or an uploaded data set's id. Uploads are checked completely
(format, decoded size, numbers, shape) before anything is stored, in a child process
(`service.decoding`), and a failure leaves neither a row nor an object behind. Object keys are
`datasets/<id>/data.<format>`: ids, never user-chosen names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ml.core import datasets as ml_datasets
from ml.core.datasets import BUILTIN_PREFIX, BuiltinInfo, DataError
from ml.core.spec import JobSpec
from service import decoding
from service.config import Settings, get_settings
from service.db import datasets as repo
from service.db import pagination, tenancy
from service.db.base import new_id, utcnow
from service.db.tables import Dataset as DatasetRow
from service.db.tenancy import Scope
from service.errors import ServiceError
from service.job_sizes import check as check_size
from service.storage import ArtifactStore, dataset_key, dataset_prefix

log = logging.getLogger("thermoml.datasets")


@dataclass(frozen=True)
class ReceivedFile:
    """An upload spooled to a local file, hashed while it streamed in."""

    path: Path
    filename: str | None
    sha256: str
    size: int
    head: bytes


def _unknown(ref: str) -> str:
    builtins = ", ".join(f"{BUILTIN_PREFIX}{n}" for n in ml_datasets.builtin_names())
    return (
        f"unknown data set {ref!r}; use a built-in ({builtins}) or the id of an uploaded data "
        "set (GET /v1/datasets lists them)"
    )


def check_ref(
    session: Session, spec: JobSpec, settings: Settings | None = None, *, scope: Scope
) -> None:
    """Refuse (422), at submit time, a spec whose `dataset` names no data set the caller's
    `scope` reaches (a built-in, or an upload of its tenant), one on which
    the job cannot run (`JobSpec.data_problem`, from the built-in's or the upload's shape), or
    one too large for the limits of `settings` (`service.job_sizes`)."""
    ref = spec.dataset
    if ref is None:
        return
    # A kind that asks nothing of the shape does not pay for it: the first look at a built-in's
    # shape generates every built-in (~1 s).
    kind = type(spec)
    asks = (
        kind.data_problem is not JobSpec.data_problem
        or kind.size_estimate is not JobSpec.size_estimate
    )
    shape: tuple[int, int] | None = None
    full: tuple[int, ...] | None = None
    if ref.startswith(BUILTIN_PREFIX):
        name = ref.removeprefix(BUILTIN_PREFIX)
        known = name in ml_datasets.builtin_names()
        if known and asks:
            builtin = next(b for b in ml_datasets.list_builtins() if b.name == name)
            shape = builtin.rows, builtin.features
            full = tuple(int(s) for s in builtin.shape)
    else:
        row = repo.find(session, dataset_id=ref, scope=scope)
        known = row is not None
        if row is not None:
            shape = int(row.rows), int(row.features)
            full = tuple(int(s) for s in row.shape)
    if not known:
        raise ServiceError(
            "validation_error",
            f"body.dataset: {_unknown(ref)}",
            [{"field": "body.dataset", "message": _unknown(ref), "type": "unknown_dataset"}],
        )
    problem = spec.data_problem(*shape) if shape is not None else None
    if problem is not None:
        raise ServiceError(
            "validation_error",
            f"body.params: {problem}",
            [{"field": "body.params", "message": problem, "type": "data_mismatch"}],
        )
    if full is not None:
        check_size(spec, full, settings or get_settings())


def load(
    sessions: sessionmaker[Session], store: ArtifactStore, ref: str, folder: Path
) -> ml_datasets.Dataset:
    """The data set `ref` as arrays, its stored file checked against its sha256.

    Raises LookupError (no such data set), DataError, or a storage error.
    """
    if ref.startswith(BUILTIN_PREFIX):
        return ml_datasets.load_builtin(ref)
    with sessions() as session:  # the worker's: the submit checked the caller could use it
        row = repo.find(session, dataset_id=ref, scope=tenancy.EVERYONE)
    if row is None:
        raise LookupError(f"{_unknown(ref)} (was it deleted?)")
    local = store.download(
        dataset_key(row.id, row.format), folder / f"data.{row.format}", sha256=row.sha256
    )
    data = ml_datasets.load_file(
        local, row.format, label_column=row.label_column or None, name=row.name
    )
    local.unlink(missing_ok=True)
    return data


def ingest(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    upload: ReceivedFile,
    *,
    name: str | None,
    label_column: str | None,
    max_bytes: int,
    tenant: str,
) -> tuple[DatasetRow, bool]:
    """Check, store and describe an upload as the tenant's; (row, created). The same content
    with the same label column returns the tenant's data set already stored. The file is
    decoded in a child process, and refused (413) when it decodes to more than `max_bytes`."""
    label = (label_column or "").strip()
    try:
        fmt = ml_datasets.detect_format(upload.filename, upload.head)
    except DataError as exc:
        raise ServiceError("validation_error", str(exc)) from exc
    with sessions() as session:
        existing = repo.find_same_content(
            session, sha256=upload.sha256, label_column=label, tenant=tenant
        )
    if existing is not None:
        return existing, False
    label_name = Path(upload.filename or "").stem
    label_name = (name or "").strip() or label_name or f"upload-{upload.sha256[:8]}"
    described = decoding.describe(
        upload.path, fmt, label_column=label or None, name=label_name, max_bytes=max_bytes
    )
    dataset_id = new_id()
    stored = store.put_file(upload.path, dataset_key(dataset_id, fmt))
    try:
        if stored.sha256 != upload.sha256:
            raise RuntimeError("the upload changed while it was stored")
        with sessions.begin() as session:
            row = repo.create(
                session,
                id=dataset_id,
                name=label_name,
                format=fmt,
                sha256=stored.sha256,
                uri=stored.uri,
                label_column=label,
                tenant=tenant,
                created_at=utcnow(),
                **described,
            )
    except IntegrityError:
        # The same content arrived concurrently and won: answer with its data set.
        store.delete_prefix(dataset_prefix(dataset_id))
        with sessions() as session:
            winner = repo.find_same_content(
                session, sha256=upload.sha256, label_column=label, tenant=tenant
            )
        if winner is None:
            raise
        return winner, False
    except BaseException:
        store.delete_prefix(dataset_prefix(dataset_id))
        raise
    return row, True


def describe(
    session: Session, dataset_id: str, *, scope: Scope
) -> tuple[BuiltinInfo | DatasetRow, dict[str, Any]]:
    """The built-in or upload `dataset_id` names, and its summary (statistics and preview)."""
    if dataset_id.startswith(BUILTIN_PREFIX):
        info = builtin(dataset_id)
        return info, builtin_summary(info.name)
    row = repo.get(session, dataset_id=dataset_id, scope=scope)
    return row, row.summary or {}


def delete(session: Session, store: ArtifactStore, dataset_id: str, *, scope: Scope) -> None:
    """Remove the row and its stored object (in a transaction of its own); 409 while a queued
    or running job uses it."""
    if dataset_id.startswith(BUILTIN_PREFIX):
        raise ServiceError("unsupported_operation", "built-in data sets cannot be deleted")
    with session.begin():
        _delete(session, store, dataset_id, scope)


def _delete(session: Session, store: ArtifactStore, dataset_id: str, scope: Scope) -> None:
    row = repo.get(session, dataset_id=dataset_id, scope=scope)
    users = repo.active_jobs_using(session, dataset_id=dataset_id)
    if users:
        raise ServiceError(
            "invalid_state",
            f"data set {dataset_id} is used by {len(users)} queued or running job(s) "
            f"({', '.join(users[:5])}); cancel them or let them finish first",
            {"job_ids": users},
        )
    # Objects first: if that fails the row stays, and deleting again finishes the job.
    store.delete_prefix(dataset_prefix(dataset_id))
    repo.delete(session, row=row)


# --- listing: the built-ins first, then uploads, newest first -----------------------------------


def _decode(cursor: str) -> tuple[int, pagination.Position | None]:
    """(index of the next built-in, position among uploads) from a listing's cursor."""
    payload = pagination.decode(cursor)
    if payload[:1] == ["builtin"] and len(payload) == 2:
        start = payload[1]
        if isinstance(start, int) and not isinstance(start, bool) and start >= 0:
            return start, None
        raise ServiceError("validation_error", pagination.NOT_OURS)
    return len(ml_datasets.builtin_names()), pagination.position_of(payload, "upload")


def list_page(
    session: Session, *, limit: int, cursor: str | None, scope: Scope, tenant: str | None = None
) -> tuple[list[BuiltinInfo | DatasetRow], str | None]:
    """The built-ins (shared by every tenant), then the uploads `scope` reaches (of `tenant`
    only, if given)."""
    uploads = partial(repo.list_page, session, scope=scope, tenant=tenant)
    builtins = ml_datasets.list_builtins()
    start, after = _decode(cursor) if cursor else (0, None)
    items: list[BuiltinInfo | DatasetRow] = list(builtins[start : start + limit])
    if start + limit < len(builtins):
        return items, pagination.encode(["builtin", start + limit])
    remaining = limit - len(items)
    if remaining == 0:
        more, _ = uploads(limit=1, after=None)
        return items, pagination.encode(["builtin", len(builtins)]) if more else None
    rows, next_cursor = uploads(limit=remaining, after=after)
    return [*items, *rows], next_cursor


def builtin(ref: str) -> BuiltinInfo:
    name = ref.removeprefix(BUILTIN_PREFIX)
    for info in ml_datasets.list_builtins():
        if info.name == name:
            return info
    raise ServiceError("not_found", _unknown(ref))


@lru_cache
def builtin_summary(name: str) -> dict[str, Any]:
    data = ml_datasets.load_builtin(name)
    return decoding.described(data)["summary"]  # type: ignore[no-any-return]
