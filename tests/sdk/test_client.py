"""`thermoml.Client` against a real HTTP server (uvicorn in a thread), and its retry and error
rules against a mock transport."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import httpx
import numpy as np
import pytest

import thermoml
from tests.service.test_client_cli import COOLING, Server, server  # noqa: F401
from thermoml import http as transport_module

PCA = {
    "kind": "pca",
    "dataset": "builtin:breast_cancer",
    "params": {"n_components": 5, "normal_label": 1},
}


def test_submit_wait_result_and_metrics(server: Server) -> None:  # noqa: F811
    with thermoml.Client(server.url) as client:
        job = client.jobs.submit(COOLING).wait(timeout=60)
        assert job.status == "succeeded" and job.done
        assert job.result["final_temperature"] == pytest.approx(25 + 75 * 0.95**20, rel=1e-12)
        columns = job.metrics()
        csv_rows = httpx.get(f"{server.url}/v1/jobs/{job.id}/metrics?format=csv").text.split()
        assert columns["step"].dtype == np.int64 and len(columns["step"]) == len(csv_rows) - 1
        assert set(columns) == {"step", *csv_rows[0].split(",")[1:]}
        assert all(len(v) == len(columns["step"]) for v in columns.values())
        only = job.metrics(names=["temperature"])
        assert set(only) == {"step", "temperature"}
        np.testing.assert_array_equal(only["temperature"], columns["temperature"])
        assert job.id in {j.id for j in client.jobs.list(status="succeeded")}
        events = [event for event, _ in client.events(job.id)]
        assert events[-1] == "end"


def test_wait_draws_progress_and_times_out(server: Server, capsys: Any) -> None:  # noqa: F811
    with thermoml.Client(server.url) as client:
        job = client.jobs.submit(COOLING).wait(progress=True)
        assert job.status == "succeeded"
        assert "succeeded" in capsys.readouterr().err
        server.run_inline(False)
        queued = client.jobs.submit(COOLING)
        with pytest.raises(TimeoutError, match="still queued"):
            queued.wait(timeout=0.3, poll=0.05)
        assert queued.cancel().status == "cancelled"


def test_errors_are_typed_with_the_servers_envelope(server: Server) -> None:  # noqa: F811
    with thermoml.Client(server.url) as client:
        with pytest.raises(thermoml.NotFound) as missing:
            client.jobs.get("nope")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        with pytest.raises(thermoml.InvalidRequest) as invalid:
            client.jobs.submit({"kind": "cooling", "params": {"dt": -1}})
        assert invalid.value.status == 422 and invalid.value.details
    with pytest.raises(thermoml.ConnectionFailed, match="cannot reach"):
        thermoml.Client("http://127.0.0.1:9", retries=0).jobs.get("x")


def test_rows_go_as_npy_and_answers_come_back_as_arrays(server: Server) -> None:  # noqa: F811
    with thermoml.Client(server.url) as client:
        job = client.jobs.submit(PCA).wait(timeout=120)
        assert job.status == "succeeded", job.error
        assert 0.5 < job.result["roc_auc"] <= 1  # the README's example prints it
        rows = np.random.default_rng(0).normal(size=(7, 30)) * 10 + 50
        answer = client.models.score(job.model_id, rows)
        reference = httpx.post(
            f"{server.url}/v1/models/{job.model_id}/score", json={"inputs": rows.tolist()}
        ).json()
        np.testing.assert_allclose(answer["scores"], reference["scores"], rtol=1e-4)
        assert answer["is_anomaly"].dtype == np.bool_ and len(answer["is_anomaly"]) == 7
        assert answer["threshold"] == pytest.approx(reference["threshold"])
        assert client.models.encode(job.model_id, rows)["latents"].shape == (7, 5)
        assert client.models.get(job.model_id)["id"] == job.model_id
        assert job.model_id in {m["id"] for m in client.models.list(kind="pca")}
        drift = client.models.drift(job.model_id, rows, permutations=50, seed=3)
        same = httpx.post(
            f"{server.url}/v1/models/{job.model_id}/drift",
            params={"permutations": 50, "seed": 3},
            json={"inputs": rows.tolist()},
        ).json()
        assert drift["p_value"] == pytest.approx(same["p_value"])
        assert drift["permutations"] == 50 and len(drift["features"]) == 30
        assert drift["drift"] is True  # rows around 50 against standardised training rows
        with pytest.raises(thermoml.InvalidRequest):
            client.models.drift(job.model_id, rows, permutations=10**6)


def mock_client(answers: list[httpx.Response], seen: list[httpx.Request]) -> thermoml.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    http = httpx.Client(base_url="http://thermoml.test", transport=httpx.MockTransport(answer))
    return thermoml.Client("http://thermoml.test", api_key="tml_k", retries=2, http=http)


def busy(status: int, retry: str | None) -> httpx.Response:
    headers = {"Retry-After": retry} if retry is not None else {}
    body = {"error": {"code": "over_capacity", "message": "busy"}}
    return httpx.Response(status, json=body, headers=headers)


def test_429_and_503_are_retried_after_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(transport_module.time, "sleep", waits.append)
    seen: list[httpx.Request] = []
    ok = httpx.Response(202, json={"id": "j1", "status": "queued"})
    client = mock_client([busy(503, "3"), busy(429, "1"), ok], seen)
    job = client.jobs.submit({"kind": "cooling"}, idempotency_key="k1")
    assert job.id == "j1" and len(seen) == 3 and waits == [3.0, 1.0]
    assert all(r.headers["authorization"] == "Bearer tml_k" for r in seen)
    assert all(r.headers["idempotency-key"] == "k1" for r in seen)
    # Past `retries` more attempts, the typed error with the server's advice.
    waits.clear()
    client = mock_client([busy(429, "2")] * 3, seen)
    with pytest.raises(thermoml.RateLimited) as limited:
        client.jobs.get("j1")
    assert limited.value.retry_after == 2.0 and limited.value.code == "over_capacity"
    assert waits == [2.0, 2.0]
    # A long Retry-After is capped; no header: exponential back-off.
    waits.clear()
    client = mock_client([busy(503, "3600"), busy(503, None), ok], seen)
    client.jobs.get("j1")
    assert waits[0] == transport_module.MAX_WAIT and 0 < waits[1] < 1


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module.time, "sleep", lambda s: None)
    seen: list[httpx.Request] = []
    body = {"error": {"code": "payload_too_large", "message": "over 10 MB", "details": {"x": 1}}}
    client = mock_client([httpx.Response(413, json=body)], seen)
    with pytest.raises(thermoml.PayloadTooLarge) as large:
        client.models.score("m", np.zeros((2, 3)))
    assert len(seen) == 1 and large.value.details == {"x": 1}
    sent = np.load(io.BytesIO(seen[0].content), allow_pickle=False)
    assert seen[0].headers["content-type"] == "application/x-npy" and sent.shape == (2, 3)
    client = mock_client([httpx.Response(500, text="boom")], seen)
    with pytest.raises(thermoml.ServerError, match="HTTP 500"):
        client.jobs.get("x")


def test_a_post_whose_answer_was_lost_is_not_sent_twice() -> None:
    calls: list[str] = []

    def drop(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        raise httpx.ReadError("connection reset")

    http = httpx.Client(base_url="http://t", transport=httpx.MockTransport(drop))
    client = thermoml.Client("http://t", retries=3, http=http)
    with pytest.raises(thermoml.ConnectionFailed):
        client.jobs.submit({"kind": "cooling"})
    assert calls == ["POST"]


def test_importing_the_client_imports_neither_tensorflow_nor_the_server() -> None:
    code = (
        "import sys, thermoml; "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'service', 'ml')]; "
        "print(json.dumps(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(out) == []
