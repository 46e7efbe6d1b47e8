"""Settings, read from the environment with the prefix ``THERMOML_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THERMOML_", extra="ignore")

    data_dir: Path = Field(Path(".thermoml"), description="State of the embedded mode.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file under the data directory."
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker URL (redis://, rediss://, redis+socket://); default: the "
        "private Redis server that `thermoml up` runs on a Unix socket under the data dir.",
    )
    artifact_uri: str | None = Field(
        None, description="fsspec URL of the artifact store; default: file:// under the data dir."
    )
    auth: Literal["disabled", "required"] = "disabled"
    metrics_auth: Literal["disabled", "required"] = "disabled"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    job_time_limit: float = Field(3600.0, gt=0, description="Seconds a job may run.")
    job_lease: float = Field(
        60.0,
        gt=0,
        description="A running job whose heartbeat is older than this may be taken over.",
    )
    max_attempts: int = Field(3, ge=1, description="Claims of one job before it fails.")
    worker_heartbeat_interval: float = Field(
        2.0,
        gt=0,
        le=60,
        description="Seconds between a worker's heartbeats; a worker silent for three of them "
        "counts as gone (/readyz, /metrics).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="`debug` also shows TensorFlow's C++ start-up messages in jobs."
    )
    publish_timeout: float = Field(
        2.0, gt=0, description="Seconds the API waits for the broker before leaving a job queued."
    )
    lost_message_grace: float = Field(
        10.0,
        gt=0,
        description="Seconds after publishing before a queued job missing from an "
        "empty broker queue is published again.",
    )
    republish_interval: float = Field(
        5.0, gt=0, description="Seconds between passes of the reconciler over unpublished jobs."
    )
    idempotency_ttl: float = Field(86400.0, gt=0, description="Seconds an Idempotency-Key holds.")
    model_cache_models: int = Field(16, ge=1, description="Loaded models kept by the API, at most.")
    model_cache_bytes: int = Field(
        2 << 30, ge=1 << 20, description="Estimated memory of loaded models kept, at most (bytes)."
    )
    max_inference_rows: int = Field(100_000, ge=1, description="Rows per inference request.")
    max_generate: int = Field(10_000, ge=1, description="Samples per generate request.")
    batching: bool = Field(True, description="Micro-batch concurrent inference requests.")
    batch_max_rows: int = Field(1024, ge=1, description="Rows in one micro-batch, at most.")
    batch_max_wait: float = Field(
        0.0, ge=0, le=1, description="Seconds a lone request waits for company (0: none)."
    )
    inference_concurrency: int = Field(
        4, ge=1, description="Requests one model computes at once outside micro-batches."
    )
    inference_queue: int = Field(
        128,
        ge=0,
        description="Further requests one model admits (waiting, or in micro-batches); beyond "
        "them a request answers 503 at once.",
    )
    inference_timeout: float = Field(
        120.0, gt=0, description="Seconds an inference request may take before it answers 503."
    )
    inference_heavy_seconds: float = Field(
        1.0, gt=0, description="Estimated seconds above which a request uses the heavy lane."
    )
    inference_heavy_concurrency: int = Field(
        1, ge=1, description="Heavy requests one model computes at once."
    )
    inference_key_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of a model's admitted requests one API key may hold (beyond: 429).",
    )
    inference_threads: int = Field(
        8, ge=1, description="Threads of model work in the API process (apart from routes')."
    )
    inference_processes: int = Field(
        0,
        ge=0,
        le=64,
        description="Child processes that run heavy model work apart from the API process "
        "(0: heavy work on the API's own threads).",
    )
    inference_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How much lower the CPU priority of model work is than the event loop's "
        "(Linux nice; 0: the same).",
    )
    model_ref_ttl: float = Field(
        2.0, ge=0, description="Seconds a resolved model reference is reused without a query."
    )
    max_upload_bytes: int = Field(
        1 << 30, gt=0, description="Largest data set file accepted by POST /v1/datasets (bytes)."
    )
    max_dataset_bytes: int = Field(
        1 << 30,
        gt=0,
        description="Largest decoded size of an uploaded data set's arrays (bytes), known from "
        "the file's headers before it is inflated.",
    )
    max_request_bytes: int = Field(
        256 << 20, ge=1024, description="Largest request body (uploads have their own limit)."
    )
    max_json_bytes: int = Field(
        16 << 20,
        ge=1024,
        description="Largest request body that is not binary rows (.npy, Arrow): JSON and "
        "forms, which parse to ~15 times their size in memory.",
    )
    max_running_jobs_per_key: int = Field(
        16, ge=1, description="Running jobs one API key may have before submits answer 429."
    )
    max_queued_jobs_per_key: int = Field(
        1000, ge=1, description="Queued jobs one API key may have before submits answer 429."
    )
    max_model_params: int = Field(
        50_000_000,
        ge=1,
        description="Weights a job's model may have, estimated from its spec and data set at "
        "submit (422 beyond): 200 MB of float32, ~1.4 GB with their training copies.",
    )
    job_memory_bytes: int = Field(
        8 << 30,
        ge=64 << 20,
        description="Memory one job process may use (bytes): a submit whose estimated peak is "
        "over it answers 422, and a job process whose resident memory passes it is killed and "
        "fails as `out_of_memory`. One number for the API and every worker host.",
    )
    memory_poll_interval: float = Field(
        0.2, gt=0, le=10, description="Seconds between reads of a job process's resident memory."
    )
    bootstrap_admin_key: str | None = Field(
        None, min_length=16, description="An admin API key made at start-up (deployments)."
    )
    session_ttl: float = Field(
        12 * 3600.0,
        gt=0,
        le=366 * 86400,
        description="Seconds a dashboard sign-in lasts; its session then answers 401.",
    )
    cookie_secure: bool = Field(
        False,
        description="Mark the session cookie Secure even when the request arrived over plain "
        "HTTP (behind a TLS-terminating proxy); it is Secure over HTTPS in any case.",
    )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'thermoml.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        """No broker URL: the data dir's private Redis (see service/embedded_redis.py)."""
        return not self.broker_url

    @property
    def resolved_broker_url(self) -> str:
        from service.embedded_redis import broker_url

        return self.broker_url or broker_url(self.data_dir)

    @property
    def resolved_artifact_uri(self) -> str:
        if self.artifact_uri:
            return self.artifact_uri
        return (self.data_dir / "artifacts").resolve().as_uri()

    # monitoring
    events_poll_interval: float = Field(
        0.25,
        gt=0,
        le=60,
        description="Seconds between reads of a watched job by its shared live-events poller.",
    )
    events_keepalive: float = Field(
        15.0, gt=0, description="Seconds of silence after which an event stream sends a comment."
    )
    shutdown_grace: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Seconds the API gives open requests to finish after SIGTERM, then closes "
        "them.",
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()
