"""The `thermoml` client commands against a real HTTP server (uvicorn in a thread)."""

from __future__ import annotations

import csv
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import client_cli
from service.cli import main
from service.config import Settings
from service.db import models as model_repo
from service.db.base import new_id, utcnow
from tests.conftest import RecordingPublisher, free_port, served
from tests.service.test_events import run_fake_worker
from thermoml import http as client_http
from thermoml.progress import JobProgress

COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}


class Server:
    def __init__(self, url: str, app: Any) -> None:
        self.url, self.app = url, app

    def run_inline(self, inline: bool) -> None:
        self.app.state.publisher = RecordingPublisher(run_inline=inline)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        return httpx.post(f"{self.url}/v1/jobs", json=spec, timeout=30).json()  # type: ignore[no-any-return]


@pytest.fixture
def server(settings: Settings) -> Iterator[Server]:
    from service.main import create_app

    app = create_app(settings.model_copy(update={"events_poll_interval": 0.02}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=True)
    with served(app) as url:
        yield Server(url, app)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_submit_wait_shows_progress_and_the_result(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(COOLING))
    code, out, err = run(capsys, "submit", str(spec), "--wait", "--server", server.url)
    assert code == 0, err
    job_id = out.split()[2]
    assert f"job {job_id} succeeded" in out
    assert "final_temperature" in out
    assert "100.0%" in err and "succeeded" in err
    assert f"{server.url}/jobs/{job_id}" in out


def test_watch_follows_a_running_job(
    server: Server, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    server.run_inline(False)
    job = server.submit({"kind": "cooling"})
    start = threading.Event()
    worker = run_fake_worker(settings, job["id"], steps=10, every=0.05, start=start)
    threading.Timer(0.3, start.set).start()
    code, out, err = run(capsys, "watch", job["id"], "--server", server.url)
    worker.join(10)
    assert code == 0
    lines = err.strip().splitlines()
    assert "queued" in lines[0]
    assert any("running" in line for line in lines)
    # Off a terminal: a line per change of status, with the elapsed time.
    assert re.match(r"100\.0%  \d\d:\d\d  succeeded", lines[-1]), lines[-1]
    assert "step 9/10" in lines[-1] and "temperature" in lines[-1]
    assert out.startswith(f"job {job['id']} succeeded")


def test_a_failed_job_exits_1_with_its_error(
    server: Server, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    server.run_inline(False)
    job = server.submit({"kind": "cooling"})
    run_fake_worker(settings, job["id"], steps=2, every=0.01, fail=True).join(10)
    code, _, err = run(capsys, "watch", job["id"], "--server", server.url)
    assert code == 1
    assert "error: diverged: it blew up" in err


def test_jobs_lists_and_filters(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    done = server.submit(COOLING)
    server.run_inline(False)
    waiting = server.submit(COOLING)
    code, out, _ = run(capsys, "jobs", "--server", server.url)
    assert code == 0
    assert out.splitlines()[0].split() == ["id", "name", "kind", "status", "progress", "created"]
    assert done["id"] in out and waiting["id"] in out
    _, queued, _ = run(capsys, "jobs", "--status", "queued", "--server", server.url)
    assert waiting["id"] in queued and done["id"] not in queued
    _, raw, _ = run(capsys, "jobs", "--json", "--server", server.url)
    assert {j["id"] for j in json.loads(raw)["items"]} == {done["id"], waiting["id"]}


def test_metrics_as_csv_and_as_a_summary(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    job = server.submit(COOLING)
    code, out, _ = run(capsys, "metrics", job["id"], "--csv", "--server", server.url)
    assert code == 0
    expected = httpx.get(f"{server.url}/v1/jobs/{job['id']}/metrics?format=csv").text
    assert out == expected
    assert len(list(csv.DictReader(io.StringIO(out)))) == 21
    _, summary, _ = run(capsys, "metrics", job["id"], "--server", server.url)
    assert "temperature" in summary and "21" in summary
    _, some, _ = run(
        capsys, "metrics", job["id"], "--names", "heat", "--json", "--server", server.url
    )
    assert set(json.loads(some)["series"]) == {"heat"}


def test_models_lists_the_registry(
    server: Server, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with server.app.state.sessions.begin() as session:
        model_repo.create(
            session,
            model_id=new_id(),
            name="digits-vae",
            kind="vae",
            job_id=None,
            artifact_uri="file:///nowhere",
            sha256="0" * 64,
            capabilities=["encode", "score"],
            created_at=utcnow(),
        )
    code, out, _ = run(capsys, "models", "--server", server.url)
    assert code == 0
    assert "digits-vae@1" in out and "encode,score" in out


def test_errors_are_the_servers_message_not_a_traceback(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "watch", "nope", "--server", server.url)
    assert code == 1
    assert err.strip() == "error: job nope does not exist (not_found)"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "nonesuch"}))
    code, _, err = run(capsys, "submit", str(bad), "--server", server.url)
    assert code == 1 and "unknown kind 'nonesuch'" in err and "validation_error" in err
    code, _, err = run(capsys, "submit", str(tmp_path / "missing.json"), "--server", server.url)
    assert code == 1 and "cannot read" in err
    code, _, err = run(capsys, "score", "nope", str(bad), "--server", server.url)
    assert code == 1 and "holds no rows" in err
    table = tmp_path / "rows.csv"
    table.write_text("a,b\n1,2\n3,x\n")
    code, _, err = run(capsys, "score", "nope", str(table), "--server", server.url)
    assert code == 1 and "rows.csv, line 3: not a row of numbers" in err
    table.write_text("1,2\n")
    code, _, err = run(capsys, "score", "nope", str(table), "--server", server.url)
    assert code == 1 and err.strip().startswith("error: no model 'nope'")
    closed = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "jobs", "--server", closed)
    assert code == 1 and err.startswith(f"error: cannot reach thermoml at {closed}")


def mock_server(
    monkeypatch: pytest.MonkeyPatch, answer: Callable[[httpx.Request], httpx.Response]
) -> None:
    """The CLI's `Api` talks to `answer` instead of a server at THERMOML_SERVER."""
    real_api = client_cli.Api
    monkeypatch.setattr(
        client_cli,
        "Api",
        lambda server, key, **kw: real_api(
            server, key, http=httpx.Client(base_url=server, transport=httpx.MockTransport(answer))
        ),
    )
    monkeypatch.setenv("THERMOML_SERVER", "http://127.0.0.1:9")


def test_score_sends_batches_with_the_key_and_prints_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        rows = json.loads(request.content)["inputs"]
        scores = [sum(r) for r in rows]
        return httpx.Response(
            200, json={"scores": scores, "threshold": 5.0, "is_anomaly": [s > 5 for s in scores]}
        )

    mock_server(monkeypatch, answer)
    monkeypatch.setenv("THERMOML_API_KEY", "tml_secret")
    data = tmp_path / "rows.csv"
    data.write_text("a,b,label\n1,2,0\n3,4,1\n0.5,0.5,0\n")
    code, out, err = run(
        capsys, "score", "my-model@2", str(data), "--label-column", "label", "--batch-rows", "2"
    )
    assert code == 0, err
    assert list(csv.reader(io.StringIO(out))) == [
        ["row", "score", "is_anomaly"],
        ["0", "3.0", "False"],
        ["1", "7.0", "True"],
        ["2", "1.0", "False"],
    ]
    assert len(seen) == 2
    assert seen[0].url == "http://127.0.0.1:9/v1/models/my-model@2/score"
    assert seen[0].headers["authorization"] == "Bearer tml_secret"
    assert "threshold 5.0" in err


def test_the_progress_line() -> None:
    out = io.StringIO()
    bar = JobProgress({"status": "running", "progress": {}}, out)
    bar.update("progress", {"fraction": 0.5, "epoch": 3, "epochs": 10, "step": 120})
    bar.update("metrics", {"series": {"loss": {"steps": [120], "values": [0.12345]}}})
    bar.update("metrics", {"series": {"internal_energy": {"steps": [120], "values": [None]}}})
    assert bar.details() == "running  epoch 3/10  step 120  loss 0.1235  internal_energy nan"
    assert re.fullmatch(r" 50\.0%  00:0\d  running  epoch 3/10 .*", bar.line())
    # Off a terminal, a line at the start; the next one after a change of status or 5 s.
    assert out.getvalue().count("\n") == 1 and "running" in out.getvalue()


def test_sse_parsing() -> None:
    lines = iter(
        ["retry: 2000", "", ": keepalive", "id: 7", "event: status", 'data: {"a": 1}', "", ""]
    )
    assert list(client_http.parse_sse(lines)) == [("7", "status", {"a": 1})]


def test_version_and_quiet_http_logging(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    import thermoml

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"thermoml {thermoml.__version__}"
    main(["jobs", "--server", "http://127.0.0.1:9"])
    assert logging.getLogger("httpx").level == logging.WARNING
    main(["jobs", "-v", "--server", "http://127.0.0.1:9"])
    assert logging.getLogger("httpx").level == logging.NOTSET
    main(["-v", "jobs", "--server", "http://127.0.0.1:9"])
    assert logging.getLogger("httpx").level == logging.NOTSET


def test_the_end_of_a_job_is_a_summary_or_with_json_the_whole_job(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": "langevin", "params": {"steps": 200, "walkers": 100}}))
    code, out, err = run(capsys, "submit", str(spec), "--wait", "--server", server.url)
    assert code == 0, err
    job = httpx.get(f"{server.url}/v1/jobs/{out.split()[2]}").json()
    shown = [line for line in out.splitlines() if line.startswith("  ")]
    scalars = [k for k, v in job["result"].items() if not isinstance(v, list | dict)]
    assert 0 < len(shown) <= client_cli.SUMMARY_FIELDS + 1 and len(out.splitlines()) < 20
    assert shown[0].split(":")[0].strip() == sorted(scalars)[0]
    code, out, err = run(capsys, "submit", str(spec), "--wait", "--json", "--server", server.url)
    assert code == 0 and json.loads(out)["result"].keys() == job["result"].keys()
    assert "submitted job" in err


def test_drift_sends_the_rows_and_options_and_prints_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        rows = json.loads(request.content)["inputs"]
        features = [
            {
                "feature": i,
                "statistic": 0.9 - i / 10,
                "p_value": 0.001,
                "p_value_adjusted": 0.002,
                "drift": i == 1,
            }
            for i in range(len(rows[0]))
        ]
        return httpx.Response(
            200,
            json={
                "drift": True,
                "p_value": 0.0099,
                "statistic": 0.25,
                "alpha": 0.01,
                "permutations": 200,
                "rows": len(rows),
                "reference_rows": 1000,
                "features": features,
            },
        )

    mock_server(monkeypatch, answer)
    data = tmp_path / "rows.csv"
    data.write_text("a,b,label\n1,2,0\n3,4,1\n")
    args = ["drift", "m", str(data), "--label-column", "label", "--permutations", "200"]
    code, out, err = run(capsys, *args, "--alpha", "0.01")
    assert code == 0, err
    assert seen[0].url.path == "/v1/models/m/drift"
    assert dict(seen[0].url.params) == {"permutations": "200", "alpha": "0.01", "seed": "0"}
    assert json.loads(seen[0].content) == {"inputs": [[1.0, 2.0], [3.0, 4.0]]}
    assert out.startswith("drift: MMD² 0.25, p = 0.0099 (200 permutations, alpha 0.01)")
    assert "2 rows against 1000 reference rows" in out
    lines = out.splitlines()
    assert any(line.split()[:2] == ["1", "0.800"] for line in lines)  # the drifted feature
    assert not any(line.split()[:1] == ["0"] for line in lines[1:])  # not the others
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0 and json.loads(out)["reference_rows"] == 1000
