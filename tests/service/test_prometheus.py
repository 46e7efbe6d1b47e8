"""`GET /metrics`: route templates, jobs by status, queue depths, heartbeats, inference."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from service import prom
from service.config import Settings
from service.db import keys as key_repo
from service.db.tables import Job
from tests.conftest import RecordingPublisher, submit

COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}
REDIS_DB = 13  # a database of this test's own; only the queue keys it writes are touched


def scrape(client: TestClient, **kwargs) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))))


def test_requests_are_counted_under_their_route_template(client: TestClient) -> None:
    job = submit(client, COOLING)
    before = scrape(client)
    route = "/v1/jobs/{job_id}"
    start = value(before, "thermoml_http_requests_total", method="GET", route=route, status="200")
    for _ in range(3):
        client.get(f"/v1/jobs/{job['id']}")
    client.get("/v1/jobs/does-not-exist")
    client.get(f"/v1/nowhere/{uuid.uuid4()}")
    response = client.get("/metrics")
    assert job["id"] not in response.text, "raw paths must not become labels"
    after = scrape(client)
    count = value(after, "thermoml_http_requests_total", method="GET", route=route, status="200")
    assert count == (start or 0) + 3
    assert value(after, "thermoml_http_requests_total", method="GET", route=route, status="404")
    assert value(
        after, "thermoml_http_requests_total", method="GET", route=prom.UNMATCHED, status="404"
    )
    latency = value(
        after, "thermoml_http_request_duration_seconds_count", method="GET", route=route
    )
    assert latency is not None and latency >= 4
    assert value(after, "process_cpu_seconds_total") is not None


def test_jobs_by_kind_and_status_are_read_at_scrape_time(client: TestClient) -> None:
    submit(client, COOLING)
    submit(client, COOLING)
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    submit(client, COOLING)
    samples = scrape(client)
    assert value(samples, "thermoml_jobs", kind="cooling", status="succeeded") == 2
    assert value(samples, "thermoml_jobs", kind="cooling", status="queued") == 1
    assert value(samples, "thermoml_jobs", kind="cooling", status="failed") == 0
    assert value(samples, "thermoml_database_up") == 1
    assert value(samples, "thermoml_running_jobs_newest_heartbeat_age_seconds") == -1


def test_heartbeat_ages_of_running_jobs(client: TestClient) -> None:
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    ids = [submit(client, COOLING)["id"] for _ in range(2)]
    now = dt.datetime.now(dt.UTC)
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        for job_id, age in zip(ids, (5, 90), strict=True):
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status="running", heartbeat_at=now - dt.timedelta(seconds=age))
            )
    samples = scrape(client)
    newest = value(samples, "thermoml_running_jobs_newest_heartbeat_age_seconds")
    oldest = value(samples, "thermoml_running_jobs_oldest_heartbeat_age_seconds")
    assert newest == pytest.approx(5, abs=3)
    assert oldest == pytest.approx(90, abs=3)


def test_documentation_routes_have_their_templates(client: TestClient) -> None:
    client.get("/openapi.json")
    client.get("/docs")
    assets = client.get("/docs").text
    asset = next(part.split('"')[0] for part in assets.split('src="')[1:])
    assert client.get(asset).status_code == 200
    samples = scrape(client)
    for route in ("/openapi.json", "/docs"):
        assert value(
            samples, "thermoml_http_requests_total", method="GET", route=route, status="200"
        )
    mounted = [
        labels
        for (name, labels) in samples
        if name == "thermoml_http_requests_total" and dict(labels)["route"].endswith("/{path}")
    ]
    assert mounted, "the docs' static files count under their mount's template"


def test_job_durations_by_outcome_and_running_speed(client: TestClient) -> None:
    done = [submit(client, COOLING)["id"] for _ in range(2)]
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    running = submit(client, COOLING)["id"]
    now = dt.datetime.now(dt.UTC)
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        for job_id, seconds in zip(done, (3.0, 5.0), strict=True):
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(started_at=now - dt.timedelta(seconds=seconds), finished_at=now)
            )
        session.execute(
            update(Job)
            .where(Job.id == running)
            .values(
                status="running",
                started_at=now - dt.timedelta(seconds=10),
                progress={"fraction": 0.5, "step": 200},
            )
        )
    samples = scrape(client)
    labels = {"kind": "cooling", "status": "succeeded"}
    assert value(samples, "thermoml_job_duration_seconds_count", **labels) == 2
    assert value(samples, "thermoml_job_duration_seconds_sum", **labels) == pytest.approx(
        8, abs=0.01
    )
    speed = value(samples, "thermoml_running_job_steps_per_second", kind="cooling")
    assert speed == pytest.approx(20, rel=0.1)


@pytest.fixture
def embedded_redis(settings: Settings) -> Iterator[redis.Redis]:
    """The data dir's private Redis server (what `thermoml up` runs), reached by its socket."""
    from service.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(settings.data_dir)
    server.start()
    client = redis.Redis(unix_socket_path=str(server.socket), socket_timeout=2)
    try:
        yield client
    finally:
        client.close()
        server.stop()


def test_queue_depths_and_workers_from_the_embedded_redis(
    client: TestClient, embedded_redis: redis.Redis
) -> None:
    from service import workers_seen

    embedded_redis.rpush("cpu", "a", "b")
    embedded_redis.rpush(f"cpu{prom.REDIS_PRIORITY_SEP}3", "c")
    embedded_redis.rpush("gpu", "d")
    workers_seen.beat(embedded_redis, name="w1@host", queues=["cpu", "gpu"], jobs=[], ttl=30)
    workers_seen.beat(embedded_redis, name="w2@host", queues=["cpu"], jobs=["j"], ttl=30)
    embedded_redis.set(workers_seen.key_of("broken@host"), b"not json")
    samples = scrape(client)
    assert value(samples, "thermoml_broker_up") == 1
    assert value(samples, "thermoml_queue_depth", queue="cpu") == 3
    assert value(samples, "thermoml_queue_depth", queue="gpu") == 1
    assert value(samples, "thermoml_workers", queue="cpu") == 2
    assert value(samples, "thermoml_workers", queue="gpu") == 1
    for name in ("w1@host", "w2@host"):
        age = value(samples, "thermoml_worker_heartbeat_age_seconds", worker=name)
        assert age is not None and 0 <= age < 5
    assert value(samples, "thermoml_worker_heartbeat_age_seconds", worker="broken@host") is None

    workers_seen.forget(embedded_redis, "w1@host")
    samples = scrape(client)
    assert value(samples, "thermoml_workers", queue="gpu") == 0


@pytest.fixture
def redis_queues() -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    keys = [f"{q}{prom.REDIS_PRIORITY_SEP}{p}" if p else q for q in ("cpu", "gpu") for p in (0, 6)]
    client.delete(*keys)
    yield client
    client.delete(*keys)
    client.close()


def test_queue_depth_from_redis_counts_every_priority_list(
    settings: Settings, redis_queues: redis.Redis
) -> None:
    redis_queues.rpush("cpu", "a", "b")
    redis_queues.rpush(f"cpu{prom.REDIS_PRIORITY_SEP}6", "c")
    redis_queues.rpush("gpu", "d")
    on_redis = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:6379/{REDIS_DB}"})
    assert prom.queue_depths(on_redis) == {"cpu": 3, "gpu": 1}


def test_an_unreachable_broker_is_reported_not_raised(settings: Settings) -> None:
    from service.main import create_app

    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down, reconcile=False)) as client:
        samples = scrape(client)
    assert value(samples, "thermoml_broker_up") == 0
    assert value(samples, "thermoml_database_up") == 1


def test_observe_inference_counts_rows_and_time_per_kind(client: TestClient) -> None:
    before = scrape(client)
    start = value(before, "thermoml_inference_rows_total", kind="vae") or 0
    prom.observe_inference("vae", 128, 0.004)
    prom.observe_inference("vae", 2, 0.001)
    after = scrape(client)
    assert value(after, "thermoml_inference_rows_total", kind="vae") == start + 130
    assert value(after, "thermoml_inference_duration_seconds_count", kind="vae") >= 2  # type: ignore[operator]


def test_metrics_auth_required_needs_a_key(settings: Settings) -> None:
    from service.main import create_app

    guarded = settings.model_copy(update={"metrics_auth": "required"})
    with TestClient(create_app(guarded, reconcile=False)) as client:
        anonymous = client.get("/metrics")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthorized"
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
            _, reader = key_repo.create(session, scopes=["read"], name="prometheus")
            _, trainer = key_repo.create(session, scopes=["train"], name="ci")
        assert (
            client.get("/metrics", headers={"Authorization": f"Bearer {trainer}"}).status_code
            == 403
        )
        assert scrape(client, headers={"Authorization": f"Bearer {reader}"})
        assert client.get("/healthz").status_code == 200  # the rest stays as it was


@pytest.mark.parametrize(
    "path", ["/v1/jobs/x/nowhere", "/v1/models/m/nothing/here", "/v1/jobs/%00", "/%00/x"]
)
def test_unmatched_paths_under_included_routers_are_counted_not_500(
    client: TestClient, path: str
) -> None:
    assert client.get(path).status_code in (404, 405, 422)
    samples = scrape(client)
    unmatched = [
        v
        for (name, labels), v in samples.items()
        if name == "thermoml_http_requests_total" and dict(labels)["route"] == prom.UNMATCHED
    ]
    assert unmatched, "an unmatched path is counted under <unmatched>"
