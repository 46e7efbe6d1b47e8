"""The jobs and metrics API against a migrated SQLite database, jobs run inline."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ml.core.registry import get_kind, list_kinds
from tests.conftest import RecordingPublisher, submit

COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}


def test_submit_runs_a_cooling_job_to_its_exact_answer(client: TestClient) -> None:
    job = submit(client, COOLING)
    assert job["status"] == "queued"
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1 and done["device"] == "CPU:0"
    assert done["progress"]["fraction"] == 1.0
    assert done["result"]["final_temperature"] == pytest.approx(25 + 75 * 0.95**20, rel=1e-12)
    assert done["started_at"] <= done["finished_at"]


def test_submit_answers_202_with_location(client: TestClient) -> None:
    response = client.post("/v1/jobs", json=COOLING)
    assert response.status_code == 202
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"


def test_default_name_and_stored_spec(client: TestClient) -> None:
    job = submit(client, {"kind": "cooling"})
    assert job["name"] == f"cooling-{job['id'][:8]}"
    assert job["spec"]["params"]["initial_temperature"] == 100.0
    assert job["queue"] == "cpu"
    gpu = submit(client, {"kind": "cooling", "resources": {"gpu": True}})
    assert gpu["queue"] == "gpu"


@pytest.mark.parametrize("kind", list_kinds())
def test_every_kind_example_is_accepted_and_runs(client: TestClient, kind: str) -> None:
    job = submit(client, get_kind(kind).spec.example)
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    # One vocabulary for every kind, TensorFlow's: `CPU:0`, `GPU:0,GPU:1`.
    assert re.fullmatch(r"(CPU|GPU):\d+(,(CPU|GPU):\d+)*", done["device"]), done["device"]


@pytest.mark.parametrize("kind", list_kinds())
def test_a_stored_spec_reads_back_as_it_was_accepted(kind: str) -> None:
    """The worker re-reads the spec the service stored (every field written out): whatever was
    accepted must validate again, whichever optimizer a trained kind uses."""
    spec_type = get_kind(kind).spec
    variants = [spec_type.example]
    if "training" in spec_type.model_fields:
        for name in ("adam", "sgd", "rmsprop", "sgld"):
            training = {**spec_type.example.get("training", {}), "optimizer": {"name": name}}
            variants.append({**spec_type.example, "training": training})
    for variant in variants:
        stored = spec_type.model_validate(variant).model_dump(mode="json")
        assert spec_type.model_validate(stored).model_dump(mode="json") == stored


def test_openapi_carries_one_example_per_kind(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == set(list_kinds())
    assert client.get("/docs").status_code == 200


def test_unknown_kind_lists_the_known_kinds(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"kind": "nonesuch"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "nonesuch" in error["message"]
    for kind in list_kinds():
        assert kind in error["message"]


def test_invalid_params_name_each_field(client: TestClient) -> None:
    spec = {"kind": "cooling", "params": {"dt": -1, "cooling_constant": "hot", "nope": 1}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert fields == {"body.params.dt", "body.params.cooling_constant", "body.params.nope"}


def test_unstable_euler_is_refused_with_the_reason(client: TestClient) -> None:
    spec = {"kind": "cooling", "params": {"method": "euler", "dt": 30, "duration": 60}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    assert "unstable" in response.json()["error"]["message"]


def test_non_finite_input_is_refused(client: TestClient) -> None:
    body = '{"kind": "cooling", "params": {"initial_temperature": NaN}}'
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "body.params.initial_temperature"


def test_malformed_json_is_a_422_in_the_envelope(client: TestClient) -> None:
    response = client.post("/v1/jobs", content="{", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_unknown_job_and_route_are_404_in_the_envelope(client: TestClient) -> None:
    for path in ("/v1/jobs/does-not-exist", "/v1/jobs/x/metrics", "/v1/nothing"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_idempotency_key_returns_the_same_job(client: TestClient) -> None:
    first = submit(client, COOLING, **{"Idempotency-Key": "k-1"})
    response = client.post("/v1/jobs", json=COOLING, headers={"Idempotency-Key": "k-1"})
    assert response.status_code == 202
    assert response.json()["id"] == first["id"]
    assert response.headers["Idempotent-Replayed"] == "true"
    spelt_out = {**COOLING, "priority": 5, "params": {**COOLING["params"], "duration": 10}}
    same = client.post("/v1/jobs", json=spelt_out, headers={"Idempotency-Key": "k-1"})
    assert same.status_code == 202 and same.json()["id"] == first["id"]  # defaults, given
    other = {"kind": "cooling", "params": {"method": "rk4"}}
    reused = client.post("/v1/jobs", json=other, headers={"Idempotency-Key": "k-1"})
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert client.get("/v1/jobs").json()["items"].__len__() == 1


def test_idempotency_key_expires(client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    first = submit(client, COOLING, **{"Idempotency-Key": "k-2"})
    client.app.state.settings = settings.model_copy(update={"idempotency_ttl": 1e-6})  # type: ignore[attr-defined]
    again = submit(client, COOLING, **{"Idempotency-Key": "k-2"})
    assert again["id"] != first["id"]


def test_list_filters_and_paginates(client: TestClient) -> None:
    ids = [submit(client, COOLING)["id"] for _ in range(5)]
    queued_only = RecordingPublisher(run_inline=False)
    client.app.state.publisher = queued_only  # type: ignore[attr-defined]
    waiting = submit(client, COOLING)["id"]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [waiting, *reversed(ids)]
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["items"]
    assert [j["id"] for j in queued] == [waiting]
    assert client.get("/v1/jobs", params={"kind": "nonesuch"}).json()["items"] == []
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 501}).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "garbage!"}).status_code == 422


def test_cancel_queued_job_and_409_after_the_end(client: TestClient) -> None:
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    job = submit(client, COOLING)
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    from workers.execute import execute

    assert execute(job["id"], worker="late") is None  # a cancelled job is never claimed
    client.app.state.publisher = RecordingPublisher(run_inline=True)  # type: ignore[attr-defined]
    done = submit(client, COOLING)
    response = client.post(f"/v1/jobs/{done['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"
    assert client.post("/v1/jobs/missing/cancel").status_code == 404


def test_metrics_json_names_and_since_step(client: TestClient) -> None:
    job = submit(client, COOLING)
    url = f"/v1/jobs/{job['id']}/metrics"
    body = client.get(url).json()
    assert body["job_id"] == job["id"]
    assert {"temperature", "entropy_total", "time"} <= set(body["series"])
    temperature = body["series"]["temperature"]
    assert temperature["steps"] == list(range(21))
    assert temperature["values"][0] == 100.0
    only = client.get(url, params={"names": "temperature,time", "since_step": 18}).json()
    assert set(only["series"]) == {"temperature", "time"}
    assert only["series"]["time"]["steps"] == [19, 20]
    repeated = client.get(url, params=[("names", "time"), ("names", "temperature")]).json()
    assert set(repeated["series"]) == {"temperature", "time"}
    missing = client.get(url, params={"names": "temperature,bogus"})
    assert missing.status_code == 404
    assert "bogus" in missing.json()["error"]["message"]
    assert "temperature" in missing.json()["error"]["details"]["available"]


def test_metrics_csv_is_one_row_per_step(client: TestClient) -> None:
    job = submit(client, COOLING)
    response = client.get(f"/v1/jobs/{job['id']}/metrics", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 21
    assert float(rows[0]["temperature"]) == 100.0
    assert float(rows[20]["time"]) == 10.0
    assert int(rows[20]["step"]) == 20


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok"}


@pytest.mark.parametrize("size", [0, 17, 10**12, 2.5, "many", None, [2]])
def test_an_ensemble_size_out_of_bounds_is_a_422_naming_it(client: TestClient, size: Any) -> None:
    spec = {"kind": "autoencoder", "dataset": "builtin:wine", "params": {"ensemble_size": size}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert fields == {"body.params.ensemble_size"}
