"""TensorBoard event files from a job's metric points, read back by TensorBoard itself."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.storage import ArtifactStore
from tests.conftest import RecordingPublisher, free_port, submit
from workers import runtime
from workers.tensorboard import crc32c, masked_crc, write_event_files

COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard not installed"
)


def read_run(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert masked_crc(b"") == 0xA282EAD8  # crc32c of nothing is 0


def test_a_jobs_history_becomes_a_tensorboard_run(client: TestClient, settings: Settings) -> None:
    job = submit(client, COOLING)
    store = ArtifactStore.from_settings(settings)
    uri = write_event_files(job["id"], runtime.sessions(), store)
    run = f"tensorboard/default/{job['id']}"  # auth disabled: the tenant `default`
    assert uri is not None and f"/{run}/events.out.tfevents." in uri
    keys = store.list(run)
    assert len(keys) == 1
    scalars = read_run(Path(store.root) / run)
    assert set(scalars) == {
        "temperature/temperature",
        "entropy/entropy_total",
        "entropy_production/entropy_production",
        "heat/heat",
        "time",
    }
    series = client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    steps = [s for s, _ in scalars["temperature/temperature"]]
    assert steps == series["temperature"]["steps"] == list(range(21))
    values = [v for _, v in scalars["temperature/temperature"]]
    assert values == pytest.approx(series["temperature"]["values"], rel=1e-6)  # float32
    # Writing again replaces the file: a resumed job does not show its points twice.
    assert write_event_files(job["id"], runtime.sessions(), store) == uri
    assert store.list(run) == keys


def test_to_a_folder_and_without_points(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    job = submit(client, COOLING)
    path = write_event_files(job["id"], runtime.sessions(), tmp_path / "logs")
    assert path is not None and Path(path).parent == tmp_path / "logs" / "default" / job["id"]
    assert [p.name for p in Path(path).parent.iterdir()] == [Path(path).name]
    assert read_run(Path(path).parent)["heat/heat"][-1][0] == 20
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    queued = submit(client, COOLING)
    assert write_event_files(queued["id"], runtime.sessions(), tmp_path / "logs") is None
    with pytest.raises(LookupError):
        write_event_files("nope", runtime.sessions(), tmp_path / "logs")


@pytest.mark.integration
def test_tensorboard_serves_every_run(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """`tensorboard --logdir <artifacts>/tensorboard/<tenant>` lists each of the tenant's jobs as a
    run, with its scalars."""
    store = ArtifactStore.from_settings(settings)
    ids = [submit(client, COOLING)["id"] for _ in range(2)]
    for job_id in ids:
        write_event_files(job_id, runtime.sessions(), store)
    port = free_port()
    tensorboard = str(Path(sys.executable).with_name("tensorboard"))
    log = (tmp_path / "tensorboard.log").open("wb")
    process = subprocess.Popen(
        [
            tensorboard,
            "--logdir",
            str(Path(store.root) / "tensorboard" / "default"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 50
        runs: list[str] = []
        while time.monotonic() < deadline and len(runs) < 2:
            with contextlib.suppress(httpx.HTTPError):
                runs = httpx.get(f"{base}/data/runs", timeout=2).json()
            time.sleep(0.3)
        assert sorted(runs) == sorted(ids), (tmp_path / "tensorboard.log").read_text()[-2000:]
        points = httpx.get(
            f"{base}/data/plugin/scalars/scalars",
            params={"run": ids[0], "tag": "temperature/temperature"},
            timeout=10,
        ).json()
        assert [p[1] for p in points] == list(range(21))
        assert points[0][2] == pytest.approx(100.0)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
