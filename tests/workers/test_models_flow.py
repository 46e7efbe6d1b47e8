"""The worker's side of data and models: data set in, checkpoints out and back, model stored and
registered, and nothing left behind when a step fails."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from service.config import Settings
from service.db.base import utcnow
from service.db.tables import Job, Model
from service.storage import ArtifactStore
from tests.tinykind import make_job, read_job, read_model, tiny  # noqa: F401
from workers import artifacts, runtime
from workers.execute import execute

pytestmark = pytest.mark.usefixtures("tiny")


def store(settings: Settings) -> ArtifactStore:
    return ArtifactStore.from_settings(settings)


def test_a_trained_model_is_stored_and_registered(settings: Settings) -> None:
    job_id = make_job("builtin:moons", name="moons-tiny")
    assert execute(job_id, worker="w") == "succeeded"
    job = read_job(job_id)
    assert job.result == {"rows": 10_000, "resumed_from": None}
    model = read_model(job.model_id or "")
    assert model is not None
    assert (model.name, model.version, model.kind, model.job_id) == (
        "moons-tiny",
        1,
        "tiny",
        job_id,
    )
    assert model.input_shape == [2] and model.capabilities == ["encode"]
    assert model.pictures == ["samples"]
    assert model.calibration == {"threshold": 0.5}
    assert model.evaluation == {"score": 0.25, "undefined": None}
    assert model.preprocessing["scale"] == "minmax" and len(model.preprocessing["offset"]) == 2
    prefix = f"models/{model.id}"
    assert model.artifact_uri == store(settings).url(prefix)
    assert set(model.files) == {"model", "meta"}
    assert model.files["model"]["key"] == f"{prefix}/model.npz"
    assert store(settings).list() == [f"{prefix}/meta.json", f"{prefix}/model.npz"]
    for entry in model.files.values():
        content = store(settings).read_bytes(entry["key"], sha256=entry["sha256"])
        assert len(content) == entry["size"]
    local = store(settings).download_files(model.files, settings.data_dir / "check")
    assert local["model"].name == "model.npz"


def test_versions_count_up_per_name(settings: Settings) -> None:
    jobs = [make_job(name="same"), make_job(name="same"), make_job(name="other")]
    for job_id in jobs:
        assert execute(job_id, worker="w") == "succeeded"
    with runtime.sessions()() as session:
        versions = session.execute(select(Model.name, Model.version).order_by(Model.created_at))
        assert list(versions) == [("same", 1), ("same", 2), ("other", 1)]


def test_an_uploaded_data_set_reaches_the_kind(client: TestClient, settings: Settings) -> None:
    content = b"a,b,c,label\n" + b"".join(
        f"{i},{i * 2},{i % 3},{i % 2}\n".encode() for i in range(50)
    )
    data = client.post(
        "/v1/datasets", files={"file": ("t.csv", content)}, data={"label_column": "label"}
    ).json()
    job_id = make_job(data["id"])
    assert execute(job_id, worker="w") == "succeeded"
    model = read_model(read_job(job_id).model_id or "")
    assert model is not None and model.input_shape == [3]


@pytest.mark.parametrize("ref", ["builtin:nope", "0b7e2d64-8a55-4a49-9c8f-3f2d8c1e9a10"])
def test_an_unknown_data_set_fails_the_job(settings: Settings, ref: str) -> None:
    job_id = make_job(ref)
    assert execute(job_id, worker="w") == "failed"
    job = read_job(job_id)
    assert job.error_code == "invalid_data"
    assert ref in (job.error_message or "") and "builtin:digits" in (job.error_message or "")


def test_a_corrupt_data_set_object_fails_the_job(client: TestClient, settings: Settings) -> None:
    data = client.post("/v1/datasets", files={"file": ("t.csv", b"a,b\n1,2\n3,4\n")}).json()
    store(settings).put_bytes(b"a,b\n1,2\n3,5\n", f"datasets/{data['id']}/data.csv")
    job_id = make_job(data["id"])
    assert execute(job_id, worker="w") == "failed"
    job = read_job(job_id)
    assert job.error_code == "invalid_data" and "is corrupt" in (job.error_message or "")


def expire(job_id: str) -> None:
    stale = utcnow() - dt.timedelta(hours=1)
    with runtime.sessions().begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale))


def test_checkpoints_are_stored_and_restored_on_takeover(settings: Settings) -> None:
    job_id = make_job(crash_after_checkpoint=True)
    assert execute(job_id, worker="dies") is None  # "crashed" after its checkpoint
    job = read_job(job_id)
    assert job.status == "running"
    key = f"jobs/{job_id}/checkpoints/1/state/progress.txt"
    assert store(settings).list() == [key]
    entry = job.checkpoint["files"]["state/progress.txt"]  # type: ignore[index]
    assert entry["sha256"] == hashlib.sha256(b"epoch 3").hexdigest()
    expire(job_id)
    assert execute(job_id, worker="rescuer") == "succeeded"
    job = read_job(job_id)
    assert job.result is not None and job.result["resumed_from"] == "epoch 3"
    assert job.checkpoint is None
    assert [k for k in store(settings).list() if k.startswith("jobs/")] == []


def test_a_corrupt_checkpoint_is_an_error_not_a_silent_restart(settings: Settings) -> None:
    job_id = make_job(crash_after_checkpoint=True)
    execute(job_id, worker="dies")
    store(settings).put_bytes(b"garbage", f"jobs/{job_id}/checkpoints/1/state/progress.txt")
    expire(job_id)
    assert execute(job_id, worker="rescuer") == "failed"
    job = read_job(job_id)
    assert job.error_code == "internal" and "is corrupt" in (job.error_message or "")
    assert store(settings).list() == []


def test_a_model_that_cannot_be_stored_leaves_nothing(settings: Settings) -> None:
    job_id = make_job(missing_file=True)
    assert execute(job_id, worker="w") == "failed"
    job = read_job(job_id)
    assert job.error_code == "internal" and "could not store the model" in (job.error_message or "")
    assert job.model_id is None
    assert store(settings).list() == []


def test_a_model_that_cannot_be_registered_leaves_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("registry down")

    monkeypatch.setattr(artifacts, "register_model", broken)
    job_id = make_job()
    assert execute(job_id, worker="w") == "failed"
    job = read_job(job_id)
    assert "could not register the model" in (job.error_message or "") and job.model_id is None
    assert store(settings).list() == []
    with runtime.sessions()() as session:
        assert session.scalars(select(Model)).all() == []


def test_the_models_a_job_reads_are_downloaded_checked_or_fail_it(
    settings: Settings, tmp_path: Any
) -> None:
    from ml.core.reporting import JobFailed

    job_id = make_job("builtin:moons", name="moons-tiny")
    assert execute(job_id, worker="w") == "succeeded"
    model = read_model(read_job(job_id).model_id or "")
    assert model is not None
    [loaded] = artifacts.load_models(runtime.sessions(), store(settings), [model.id], tmp_path)
    assert (loaded.id, loaded.kind, loaded.name) == (model.id, "tiny", "moons-tiny@1")
    assert set(loaded.files) == set(model.files)
    for name, path in loaded.files.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == model.files[name]["sha256"]
    assert loaded.meta["input_shape"] == [2] and loaded.meta["capabilities"] == ["encode"]
    gone = "0b7e2d64-8a55-4a49-9c8f-3f2d8c1e9a10"
    with pytest.raises(JobFailed, match=f"model {gone} was deleted"):
        artifacts.load_models(runtime.sessions(), store(settings), [model.id, gone], tmp_path / "b")
    store(settings).put_bytes(b"not the model", model.files["model"]["key"])
    with pytest.raises(JobFailed, match="moons-tiny@1") as failed:
        artifacts.load_models(runtime.sessions(), store(settings), [model.id], tmp_path / "c")
    assert failed.value.code == "invalid_data"
