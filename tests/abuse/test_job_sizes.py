"""Jobs that cannot fit are refused at submit, before a worker tries them: layer widths are
bounded, and each trained kind's estimate of its parameters and peak memory (from the spec and
the data set's shape) is held against THERMOML_MAX_MODEL_PARAMS and THERMOML_JOB_MEMORY_BYTES."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ml.core.datasets import list_builtins
from ml.core.registry import get_kind, list_kinds
from ml.core.spec import JobSpec
from service.config import Settings
from tests.abuse.helpers import assert_error, assert_still_serving
from tests.conftest import RecordingPublisher

MEMORY_BUDGET = 3 << 29  # 1.5 GiB: room for the runtime and a small model
SIZED = sorted(
    k for k in list_kinds() if get_kind(k).spec.size_estimate is not JobSpec.size_estimate
)


def autoencoder(**params: Any) -> dict[str, Any]:
    example = get_kind("autoencoder").spec.example
    return {**example, "params": {**example["params"], **params}}


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set before `settings` reads the environment, so the app and `get_settings()` agree."""
    monkeypatch.setenv("THERMOML_JOB_MEMORY_BYTES", str(MEMORY_BUDGET))


@pytest.fixture
def client(budget: None, settings: Settings) -> Iterator[TestClient]:
    from service.main import create_app

    assert settings.job_memory_bytes == MEMORY_BUDGET
    app = create_app(settings, reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)  # accepted jobs stay queued
    with TestClient(app) as test_client:
        yield test_client


def test_a_layer_two_hundred_million_wide_is_refused(client: TestClient) -> None:
    answer = client.post("/v1/jobs", json=autoencoder(hidden=[200_000_000]))
    error = assert_error(answer, 422, "validation_error")
    refused = [d for d in error["details"] if d["field"].endswith("params.hidden.0")]
    assert refused and "65536" in refused[0]["message"], error
    assert_still_serving(client)
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_model_over_the_parameter_limit_is_refused_with_its_estimate(
    client: TestClient,
) -> None:
    # 30 features → 65536 → 65536 → 4 and back: ~8.6 billion weights, each layer within bounds
    answer = client.post("/v1/jobs", json=autoencoder(hidden=[65_536, 65_536]))
    error = assert_error(answer, 422, "validation_error")
    (detail,) = error["details"]
    assert detail["field"] == "body.params.hidden"
    assert detail["type"] == "too_many_parameters"
    expected = 2 * (65_536 * 65_536 + 65_536) + 2 * (30 * 65_536 + 65_536) + 4 * 65_536 + 4
    expected += 65_536 * 4 + 30  # the latent head's and the output layer's
    assert detail["estimate"]["parameters"] == expected
    assert f"{expected:,}" in error["message"] and "THERMOML_MAX_MODEL_PARAMS" in error["message"]
    assert_still_serving(client)
    assert client.get("/v1/jobs").json()["items"] == []


def test_an_estimate_over_the_memory_budget_is_refused(client: TestClient) -> None:
    # ~34 M weights: under the parameter limit, but ~0.9 GiB of training copies on top of the
    # 1 GiB runtime passes the 1.5 GiB budget
    answer = client.post("/v1/jobs", json=autoencoder(hidden=[4096, 4096]))
    error = assert_error(answer, 422, "validation_error")
    (detail,) = error["details"]
    assert detail["field"] == "body.params.hidden"
    assert detail["type"] == "too_much_memory"
    assert detail["estimate"]["memory_bytes"] > MEMORY_BUDGET
    assert detail["estimate"]["parameters"] < 50_000_000
    assert "THERMOML_JOB_MEMORY_BYTES" in error["message"]


def test_a_batch_larger_than_the_data_set_shrinks_to_it_and_fits(client: TestClient) -> None:
    example = get_kind("tsne").spec.example
    spec = {**example, "dataset": "builtin:digits", "training": {"batch_size": 65_536}}
    answer = client.post("/v1/jobs", json=spec)
    # digits has 1797 rows: the batch shrinks to them, so this one fits
    assert answer.status_code == 202, answer.text
    assert client.get("/v1/jobs").json()["items"]


def test_a_small_model_passes(client: TestClient) -> None:
    answer = client.post("/v1/jobs", json=autoencoder(hidden=[64, 16]))
    assert answer.status_code == 202, answer.text


@pytest.mark.parametrize("kind", SIZED)
def test_every_sized_kinds_example_fits_the_default_limits(kind: str) -> None:
    spec = get_kind(kind).spec.model_validate(get_kind(kind).spec.example)
    defaults = Settings()
    name = (spec.dataset or "").removeprefix("builtin:")
    shape = next(tuple(b.shape) for b in list_builtins() if b.name == name)
    estimate = spec.size_estimate(shape[0], shape[1:])
    assert estimate is not None
    assert estimate.total_parameters <= defaults.max_model_params
    assert estimate.total_memory <= defaults.job_memory_bytes


def test_the_apps_own_limits_apply_not_the_environments(settings: Settings) -> None:
    """An app made with its own settings (not read from the environment) holds jobs to them."""
    from service.main import create_app

    app = create_app(settings.model_copy(update={"max_model_params": 1000}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)
    with TestClient(app) as small:
        error = assert_error(small.post("/v1/jobs", json=autoencoder()), 422, "validation_error")
    assert "over the limit of 1,000" in error["message"], error
