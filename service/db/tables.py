"""The tables. The schema itself is made only by the Alembic migrations in `migrations/`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, UTCDateTime, new_id, utcnow

ID = String(36)
# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    priority: Mapped[int] = mapped_column(Integer, default=5)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    model_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    # The last checkpoint's files in the artifact store: {"generation", "files": {path: entry}}.
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The API key that submitted the job (None when authentication is disabled).
    api_key_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    # The tenant that owns the row; rows made before tenants existed belong to "default".
    tenant: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    idempotency_scope: Mapped[str | None] = mapped_column(String(64), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_kind_created_at", "kind", "created_at"),
        UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_jobs_idempotency"),
        Index("ix_jobs_api_key_id_status", "api_key_id", "status"),
        Index("ix_jobs_tenant_created_at_id", "tenant", "created_at", "id"),
    )


class MetricPoint(Base):
    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ID, ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    step: Mapped[int] = mapped_column(BigInteger)
    # NULL stands for a non-finite value; the API sends it as JSON null.
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    # The unique constraint's index (job_id, name, step) also serves "one job's series".
    __table_args__ = (
        UniqueConstraint("job_id", "name", "step", name="uq_metric_points_job_name_step"),
    )


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True
    )
    artifact_uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    input_shape: Mapped[list[int]] = mapped_column(JSON, default=list)
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    pictures: Mapped[list[str]] = mapped_column(JSON, default=list)
    calibration: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {logical name: {"key", "sha256", "size"}}; `sha256` above is the hash of this manifest.
    files: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    # The tenant that owns the row; rows made before tenants existed belong to "default".
    tenant: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        # Names resolve within a tenant: two tenants may both own `cancer-ae` version 1.
        UniqueConstraint("tenant", "name", "version", name="uq_models_tenant_name_version"),
        Index("ix_models_tenant_created_at_id", "tenant", "created_at", "id"),
        Index("ix_models_kind_created_at", "kind", "created_at"),
        Index("ix_models_created_at_id", "created_at", "id"),
    )


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))
    shape: Mapped[list[int]] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(32))
    rows: Mapped[int] = mapped_column(BigInteger)
    features: Mapped[int] = mapped_column(BigInteger)
    has_labels: Mapped[bool] = mapped_column(Boolean, default=False)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    uri: Mapped[str] = mapped_column(Text)
    # "" when the data set has no label column (so that the dedupe constraint sees it).
    label_column: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # Per-feature statistics and a preview, computed once at upload.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The tenant that owns the row; rows made before tenants existed belong to "default".
    tenant: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        # Identical content with the same label column is stored once per tenant.
        UniqueConstraint(
            "tenant", "sha256", "label_column", name="uq_datasets_tenant_sha256_label_column"
        ),
        Index("ix_datasets_tenant_created_at_id", "tenant", "created_at", "id"),
        Index("ix_datasets_created_at_id", "created_at", "id"),
    )


class ApiKey(Base):
    """An API key: only the SHA-256 of the secret is kept (the secret is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    tenant: Mapped[str] = mapped_column(
        String(64), default="default", server_default="default", index=True
    )


class SignInSession(Base):
    """A dashboard sign-in: the cookie holds a random id, this row only its SHA-256."""

    __tablename__ = "sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ID, ForeignKey("api_keys.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_sessions_key_id", "key_id"),
        Index("ix_sessions_expires_at", "expires_at"),
    )
