"""A client generated from the running service's /openapi.json by openapi-python-client (the
version pinned in the `dev` extra) does the whole round trip on its own: submit a job and wait
for it, read its metrics as JSON, CSV and PNG, train a model and score JSON and `.npy` rows, and
read a 404 as the error model."""

from __future__ import annotations

import importlib
import inspect
import io
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest

from service.config import Settings
from tests.service.test_client_cli import Server, server  # noqa: F401  (the fixture)

pytest.importorskip("openapi_python_client")
pytestmark = pytest.mark.timeout(180)

PACKAGE = "thermoml_client"
# The generator knows JSON, text and application/octet-stream: the binary types are mapped to
# octet-stream. A generated client sends a `File` body as the row operations' last binary type,
# `.npy`.
CONFIG = f"""\
project_name_override: thermoml-client
package_name_override: {PACKAGE}
post_hooks: []
content_type_overrides:
  application/x-npy: application/octet-stream
  application/x-npz: application/octet-stream
  application/vnd.apache.arrow.stream: application/octet-stream
  image/png: application/octet-stream
"""
COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}
PCA = {
    "kind": "pca",
    "dataset": "builtin:breast_cancer",
    "params": {"n_components": 5, "normal_label": 1},
}


@pytest.fixture
def generated(server: Server, tmp_path: Path) -> Iterator[ModuleType]:  # noqa: F811
    """The generated package, imported from a folder on sys.path (nothing is installed)."""
    document = tmp_path / "openapi.json"
    document.write_bytes(httpx.get(f"{server.url}/openapi.json", timeout=30).content)
    config = tmp_path / "config.yml"
    config.write_text(CONFIG)
    out = tmp_path / "client"
    out.mkdir()
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document)]
    command += ["--config", str(config), "--output-path", str(out / PACKAGE), "--meta", "none"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def api(operation: str) -> Any:
    """A generated operation module by its tag and operation id, e.g. `jobs.submit_job`."""
    return importlib.import_module(f"{PACKAGE}.api.{operation}")


def models() -> Any:
    return importlib.import_module(f"{PACKAGE}.models")


def submitted_and_done(client: Any, spec: dict[str, Any], spec_class: str) -> Any:
    """Submit `spec` with the generated client and wait for the job to end."""
    body = getattr(models(), spec_class).from_dict(spec)
    job = api("jobs.submit_job").sync(client=client, body=body)
    assert isinstance(job, models().JobOut), job
    deadline = time.monotonic() + 60
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job.id} is still {job.status}"
        time.sleep(0.1)
        job = api("jobs.get_job").sync(job_id=job.id, client=client)
    assert job.status == "succeeded", job.error
    return job


def test_a_generated_client_does_the_round_trip(generated: ModuleType, server: Server) -> None:  # noqa: F811
    client = generated.Client(base_url=server.url, timeout=httpx.Timeout(60))
    # Auth is disabled: operations take a plain Client.
    assert "AuthenticatedClient |" in str(inspect.signature(api("jobs.submit_job").sync))
    job = submitted_and_done(client, COOLING, "CoolingSpec")

    metrics = api("metrics.job_metrics").sync(job_id=job.id, client=client)
    assert isinstance(metrics, models().MetricsOut), metrics
    series = metrics.series.to_dict()
    temperature = series["temperature"]
    assert len(temperature["steps"]) == len(temperature["values"]) > 1
    # CSV: the generated operation parses its 200 as JSON, so CSV is read through the generated
    # client's own HTTP client (base URL and credentials included).
    csv = client.get_httpx_client().get(f"/v1/jobs/{job.id}/metrics", params={"format": "csv"})
    lines = csv.text.strip().splitlines()
    assert csv.headers["content-type"].startswith("text/csv")
    assert lines[0].split(",") == ["step", *sorted(series)]
    steps = {s for name in series for s in series[name]["steps"]}
    assert len(lines) - 1 == len(steps)

    png = api("metrics.job_metrics_png").sync(job_id=job.id, client=client)
    assert png.payload.read(8) == b"\x89PNG\r\n\x1a\n"

    missing = api("jobs.get_job").sync(job_id=str(uuid.uuid4()), client=client)
    assert isinstance(missing, models().ErrorBody), missing
    assert missing.error.code == "not_found"


def test_a_generated_client_scores_json_and_npy_rows(
    generated: ModuleType,
    server: Server,  # noqa: F811
) -> None:
    from sklearn.datasets import load_breast_cancer

    client = generated.Client(base_url=server.url, timeout=httpx.Timeout(60))
    job = submitted_and_done(client, PCA, "PcaSpec")
    rows = load_breast_cancer().data[:8]
    score = api("inference.score")

    by_json = score.sync(ref=job.model_id, client=client, body=models().Rows(inputs=rows.tolist()))
    assert isinstance(by_json, models().ScoreOut), by_json
    assert len(by_json.scores) == len(rows)
    assert by_json.is_anomaly == [s > by_json.threshold for s in by_json.scores]

    buffer = io.BytesIO()
    np.save(buffer, rows.astype(np.float32))
    npy = generated.types.File(payload=io.BytesIO(buffer.getvalue()), mime_type="application/x-npy")
    by_npy = score.sync(ref=job.model_id, client=client, body=npy)
    assert isinstance(by_npy, models().ScoreOut), by_npy
    # The same rows (float32 either way on the server) score the same.
    np.testing.assert_allclose(by_npy.scores, by_json.scores, rtol=1e-6)

    body = models().Rows(inputs=rows.tolist())
    latents = api("inference.encode").sync(ref=job.model_id, client=client, body=body)
    assert isinstance(latents, models().EncodeOut), latents
    assert np.shape(latents.latents) == (len(rows), 5)
    again = api("inference.reconstruct").sync(ref=job.model_id, client=client, body=body)
    assert isinstance(again, models().ReconstructOut), again
    assert np.shape(again.reconstructions) == rows.shape

    unserved = api("inference.generate").sync(
        ref=job.model_id, client=client, body=models().GenerateRequest(n=2)
    )
    assert isinstance(unserved, models().ErrorBody), unserved
    assert unserved.error.code == "unsupported_operation"


def test_the_document_declares_what_a_client_needs(settings: Settings) -> None:
    """Shared rows, the envelope for every error (no HTTPValidationError), operation ids, and
    bearer security only when auth is required."""
    from service.main import create_app

    open_doc = create_app(settings, reconcile=False).openapi()
    guarded = settings.model_copy(update={"auth": "required"})
    auth_doc = create_app(guarded, reconcile=False).openapi()
    text = str(open_doc) + str(auth_doc)
    assert "HTTPValidationError" not in text
    ids = [op["operationId"] for p in open_doc["paths"].values() for op in p.values()]
    assert len(ids) == len(set(ids))
    assert {"submit_job", "get_job", "list_jobs", "cancel_job", "job_metrics", "score"} <= set(ids)
    rows = {"$ref": "#/components/schemas/Rows"}
    for op in ("encode", "reconstruct", "score", "predict"):
        operation = open_doc["paths"][f"/v1/models/{{ref}}/{op}"]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == rows
    for doc in (open_doc, auth_doc):
        for path, item in doc["paths"].items():
            for operation in item.values():
                for status, answer in operation["responses"].items():
                    if int(status) >= 400:
                        schema = answer["content"]["application/json"]["schema"]
                        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, path
    secured = [op.get("security") for p in open_doc["paths"].values() for op in p.values()]
    assert not any(secured)
    assert auth_doc["paths"]["/v1/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in auth_doc["paths"]["/healthz"]["get"]
    assert "401" in auth_doc["paths"]["/v1/jobs"]["post"]["responses"]
