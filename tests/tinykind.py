"""A tiny model kind for tests: reads `context.dataset`, fits a scaler on the training split and
returns a ModelOutcome with two small files. Register it with the `tiny` fixture."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pytest

from ml.core import registry
from ml.core.preprocessing import Scaler
from ml.core.reporting import JobFailed, ModelOutcome, Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field
from ml.core.splits import split_indices
from service import jobs as lifecycle

# The API's job-spec body (`POST /v1/jobs`: its union of specs and its examples) is built from the
# registry once, when its router is imported. Import it before `tiny` can be registered, so that
# the test kind never becomes part of the API whatever order the tests run in.
from service.api.routes import jobs as _jobs_router  # noqa: F401
from service.db.base import new_id
from service.db.tables import Job, Model
from workers import runtime
from workers.reporter import JobLost


class TinyParams(StrictModel):
    crash_after_checkpoint: bool = False  # first attempt: checkpoint, then "die"
    missing_file: bool = False


class TinySpec(JobSpec):
    kind: Literal["tiny"]
    params: TinyParams = TinyParams()
    preprocessing: Preprocessing = preprocessing_field("minmax")


def run_tiny(spec: TinySpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    data = context.dataset
    if data is None:
        raise JobFailed("invalid_data", "tiny needs a data set")
    state = context.checkpoint_dir / "state" / "progress.txt"
    resumed = state.read_text() if state.exists() else None
    if spec.params.crash_after_checkpoint and resumed is None:
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text("epoch 3")
        reporter.checkpoint()
        raise JobLost("simulated crash")  # the job stays running, as if the worker died
    split = split_indices(data.rows, validation_split=0.2, seed=0)
    scaler = Scaler.from_spec(spec.preprocessing).fit(data.x[split.train])
    weights = context.workdir / "model.npz"
    np.savez(weights, mean=scaler.transform(data.x[split.train]).mean(axis=0))
    meta = context.workdir / "meta.json"
    meta.write_text(json.dumps({"rows": data.rows}))
    files = {"model": weights, "meta": meta}
    if spec.params.missing_file:
        files["gone"] = context.workdir / "never-written.bin"
    model = ModelOutcome(
        files=files,
        input_shape=list(data.feature_shape),
        capabilities=["encode"],
        preprocessing=scaler.to_dict(),
        calibration={"threshold": np.float32(0.5)},
        evaluation={"score": np.float64(0.25), "undefined": float("nan")},
        pictures=["samples"],
    )
    return RunOutcome(result={"rows": data.rows, "resumed_from": resumed}, model=model)


def register_tiny() -> None:
    registry.register_kind(
        name="tiny",
        spec=TinySpec,
        summary="test model",
        category="model",
        serves=frozenset({"encode"}),
    )(run_tiny)  # type: ignore[arg-type]


def unregister_tiny() -> None:
    registry._KINDS.pop("tiny", None)


@pytest.fixture
def tiny() -> Iterator[None]:
    """`tiny` is a registered kind for the test, and is not once the test is over."""
    register_tiny()
    yield
    unregister_tiny()


def make_job(dataset: str | None = "builtin:moons", name: str = "tiny-model", **params: Any) -> str:
    job_id = new_id()
    spec: dict[str, Any] = {"kind": "tiny", "name": name, "params": params}
    if dataset is not None:
        spec["dataset"] = dataset
    with runtime.sessions().begin() as session:
        lifecycle.create(session, TinySpec.model_validate(spec), job_id)
    return job_id


def read_job(job_id: str) -> Job:
    with runtime.sessions()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def read_model(model_id: str) -> Model | None:
    with runtime.sessions()() as session:
        return session.get(Model, model_id)
