"""TensorBoard event files: written live by the running attempt (one file per attempt, flushed
at each report), never a point twice across attempts, in the run folder `<name>-<short id>` under
the tenant's folder, on a local store and on S3; read back by our reader and by TensorBoard."""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service import jobs as lifecycle
from service.config import Settings, get_settings
from service.db import metrics as metric_repo
from service.storage import ArtifactStore
from tests.conftest import RecordingPublisher, free_port, submit
from tests.s3server import running_s3_server, use_s3
from workers import reporter as reporter_module
from workers import runtime
from workers import tensorboard as tb
from workers.event_codec import (
    FILE_VERSION,
    crc32c,
    event,
    masked_crc,
    read_events,
    scalar_value,
    tfrecord,
)
from workers.reporter import DbReporter

COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}
SAFE_RUN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}-[0-9a-f]{8}$")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard not installed"
)


def read_run(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The run as TensorBoard itself reads it."""
    accumulator = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def our_points(files: list[bytes]) -> list[tuple[str, int, float]]:
    """Every scalar of the files, in order, by our own reader (duplicates kept)."""
    return [
        (tag, item.step, value)
        for data in files
        for item in read_events(data)
        for tag, value in item.scalars.items()
    ]


def event_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if "tfevents" in p.name)


# --- the encoding -------------------------------------------------------------------------------


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert masked_crc(b"") == 0xA282EAD8  # crc32c of nothing is 0


def test_our_reader_reads_what_we_write_and_stops_at_a_torn_frame() -> None:
    data = tfrecord(event(1.5, 0, file_version=FILE_VERSION)) + b"".join(
        tfrecord(
            event(2.0 + s, s, values=[scalar_value("heat/heat", s / 4), scalar_value("x", -s)])
        )
        for s in (1, 2, 3)
    )
    events = read_events(data)
    assert events[0].file_version == FILE_VERSION and events[0].wall_time == 1.5
    assert [(e.step, e.scalars) for e in events[1:]] == [
        (s, {"heat/heat": s / 4, "x": -float(s)}) for s in (1, 2, 3)
    ]
    assert len(read_events(data[:-3])) == 3  # a writer died mid-frame: the intact ones
    flipped = bytearray(data)
    flipped[-6] ^= 0xFF  # inside the last payload: its CRC no longer matches
    assert len(read_events(bytes(flipped))) == 3
    (big,) = read_events(tfrecord(event(0.0, 1, values=[scalar_value("a", -1e300)])))
    assert big.scalars == {"a": float("-inf")}  # beyond float32, as TensorFlow would write it
    huge = struct.pack("<Q", 1 << 60)
    assert read_events(huge + struct.pack("<I", masked_crc(huge)) + b"x" * 8) == []


# --- the run folder -----------------------------------------------------------------------------

JOB_ID = "1a2b3c4d-8a55-4a49-9c8f-3f2d8c1e9a10"


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "..",
        "a/../../b",
        "/abs/path",
        "C:\\Windows\\system32",
        "nul\x00byte",
        "bell\x07\x1b[31mred\r\nline",
        "  spaced  out  ",
        "ünïcödé café",
        "名前だけ",
        ".hidden",
        "a..b...c",
        "x" * 5000,
        "-" * 10 + "." * 10,
        "\udcff surrogate",
    ],
)
def test_a_hostile_name_becomes_one_safe_folder_in_the_tenants_folder(name: str) -> None:
    run = tb.run_name(name, "autoencoder", JOB_ID)
    assert SAFE_RUN.match(run), run
    assert ".." not in run and run.endswith("-1a2b3c4d")
    assert tb.run_folder("team-7", run) == f"team-7/{run}"


def test_run_names() -> None:
    assert tb.run_name("cancer-ae", "autoencoder", JOB_ID) == "cancer-ae-1a2b3c4d"
    assert tb.run_name(None, "autoencoder", JOB_ID) == "autoencoder-1a2b3c4d"
    assert tb.run_name("名前", "vae", JOB_ID) == "vae-1a2b3c4d"  # nothing of it is left
    assert tb.run_name("ünï cödé/../x", "vae", JOB_ID) == "uni-code-.-x-1a2b3c4d"
    assert tb.run_name("x" * 500, "vae", JOB_ID) == "x" * tb.RUN_NAME_CHARS + "-1a2b3c4d"
    with pytest.raises(ValueError):
        tb.run_name("a", "vae", "../../../x")
    with pytest.raises(ValueError):
        tb.run_folder("default", "a/b")


# --- a running job's file -----------------------------------------------------------------------


def queued_job(client: TestClient, **fields: object) -> str:
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    return str(submit(client, {**COOLING, **fields})["id"])


def attempt_of(job_id: str) -> int:
    """Claim the job as a worker would (taking it over from an earlier attempt)."""
    with runtime.sessions().begin() as session:
        attempt = lifecycle.claim(session, job_id=job_id, worker="w", lease_s=0.0, max_attempts=10)
    assert attempt is not None
    return attempt


def live(job_id: str, attempt: int, target: ArtifactStore | Path, staging: Path) -> DbReporter:
    writer = tb.EventWriter(
        job_id, attempt=attempt, sessions=runtime.sessions(), target=target, staging=staging
    )
    reporter = DbReporter(
        runtime.sessions(), job_id=job_id, attempt=attempt, deadline=1e18, time_limit=1e18
    )
    reporter.on_points = writer.write
    reporter.writer = writer  # type: ignore[attr-defined]
    return reporter


def test_each_report_is_in_the_file_when_it_returns(
    client: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reporter_module, "FLUSH_INTERVAL_S", 0.0)  # every report is flushed
    job_id = queued_job(client, name="live run")
    store = ArtifactStore.from_settings(settings)
    reporter = live(job_id, attempt_of(job_id), store, tmp_path / "staging")
    run = Path(store.root) / "tensorboard" / "default" / f"live-run-{job_id[:8]}"
    for step in range(1, 6):
        reporter.metrics(step, {"heat": step / 10, "temperature": 100.0 - step, "x": float("nan")})
        (path,) = event_files(run)  # read by another handle while the writer holds the file
        assert path.name.endswith(f".thermoml-{job_id}.001")
        points = our_points([path.read_bytes()])
        assert [(t, s) for t, s, _ in points] == [
            (tag, s) for s in range(1, step + 1) for tag in ("heat/heat", "temperature/temperature")
        ]
    assert points[-2:] == [
        ("heat/heat", 5, pytest.approx(0.5)),
        ("temperature/temperature", 5, 95.0),
    ]
    assert not (tmp_path / "staging").exists()  # a local store is written in place
    uri = reporter.writer.finish()  # type: ignore[attr-defined]
    assert uri == store.url(f"tensorboard/default/live-run-{job_id[:8]}/{path.name}")
    assert read_run(run)["heat/heat"] == [(s, pytest.approx(s / 10)) for s in range(1, 6)]


def test_a_batch_out_of_order_or_repeated_is_written_once_per_step(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    job_id = queued_job(client)
    reporter = live(job_id, attempt_of(job_id), tmp_path / "logs", tmp_path / "staging")
    reporter.metrics(1, {"heat": 1.0})
    reporter.flush()
    writer = reporter.writer  # type: ignore[attr-defined]
    writer.write([("heat", 5, 5.0), ("heat", 3, 3.0), ("heat", 5, 50.0), ("heat", 1, -1.0)])
    writer.write([("heat", 4, 4.0), ("heat", 6, math.inf), ("heat", 7, 7.0)])
    points = our_points([Path(writer.finish()).read_bytes()])
    assert [(s, v) for _, s, v in points] == [(1, 1.0), (3, 3.0), (5, 50.0), (7, 7.0)]


def test_a_resumed_job_writes_no_point_twice(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """Attempt 1 records steps 1-10 and dies; its last two were stored but never reached its
    file (points 9 and 10 straight into the database), and its file ends in half a frame.
    Attempt 2 resumes from a checkpoint at step 6 and records 7-15 again."""
    job_id = queued_job(client)
    store = ArtifactStore.from_settings(settings)
    first = live(job_id, attempt_of(job_id), store, tmp_path / "a1")
    for step in range(1, 9):
        first.metrics(step, {"heat": float(step)})
        first.flush()
    with runtime.sessions().begin() as session:
        points = [("heat", step, float(step)) for step in (9, 10)]
        metric_repo.upsert(session, job_id=job_id, points=points)
    run = Path(store.root) / "tensorboard" / "default" / f"cooling-{job_id[:8]}"
    (path,) = event_files(run)
    with path.open("ab") as torn:
        torn.write(tfrecord(event(0.0, 9, values=[scalar_value("heat/heat", 9.0)]))[:-5])

    second = live(job_id, attempt_of(job_id), store, tmp_path / "a2")
    for step in range(7, 16):
        second.metrics(step, {"heat": 100.0 + step})
        second.flush()
    assert second.writer.finish() is not None  # type: ignore[attr-defined]
    files = event_files(run)
    assert [p.name[-4:] for p in files] == [".001", ".002"]
    points = our_points([p.read_bytes() for p in files])
    assert [s for _, s, _ in points] == list(range(1, 16))  # each step once, in order
    # 9 and 10 from the database (attempt 1's values), 11 on from attempt 2.
    assert [v for _, _, v in points] == [float(s) for s in range(1, 11)] + [
        100.0 + s for s in range(11, 16)
    ]
    assert [s for s, _ in read_run(run)["heat/heat"]] == list(range(1, 16))


def test_a_failed_live_write_is_made_good_from_the_database(
    client: TestClient, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = queued_job(client)
    store = ArtifactStore.from_settings(settings)
    reporter = live(job_id, attempt_of(job_id), store, tmp_path / "a1")
    writer = reporter.writer  # type: ignore[attr-defined]
    reporter.metrics(1, {"heat": 1.0})
    reporter.flush()

    def full_disk(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_append", full_disk)
    for step in (2, 3):
        reporter.metrics(step, {"heat": float(step)})
        reporter.flush()  # the job goes on
    assert writer.broken
    monkeypatch.undo()
    assert writer.finish() == store.url(f"tensorboard/{writer.key}")
    path = writer.logdir / writer.key
    assert [s for _, s, _ in our_points([path.read_bytes()])] == [1, 2, 3]


def test_a_job_without_points_has_no_file(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    job_id = queued_job(client)
    reporter = live(job_id, attempt_of(job_id), tmp_path / "logs", tmp_path / "staging")
    reporter.metrics(1, {"heat": float("inf")})
    reporter.flush()
    assert reporter.writer.finish() is None  # type: ignore[attr-defined]
    assert not (tmp_path / "logs").exists()
    with pytest.raises(LookupError):
        tb.write_event_files("nope", runtime.sessions(), tmp_path / "logs")


# --- whole jobs ---------------------------------------------------------------------------------


def test_a_finished_job_is_a_tensorboard_run(client: TestClient, settings: Settings) -> None:
    job = submit(client, {**COOLING, "name": "../../cool\x07ing/ run"})
    store = ArtifactStore.from_settings(settings)
    run = f"tensorboard/default/cool-ing-run-{job['id'][:8]}"  # auth disabled: tenant `default`
    (key,) = store.list("tensorboard")
    assert key.startswith(f"{run}/events.out.tfevents.") and key.endswith(f"{job['id']}.001")
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
    # The export from the database writes the same points, into the attempt's own file.
    assert tb.write_event_files(job["id"], runtime.sessions(), store) == store.url(key)
    assert read_run(Path(store.root) / run) == scalars


@pytest.fixture
def s3(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArtifactStore]:
    with running_s3_server() as server:
        use_s3(monkeypatch, server, server.new_bucket())
        get_settings.cache_clear()
        yield ArtifactStore.from_settings(get_settings())


def test_on_s3_the_attempts_file_is_uploaded_as_it_grows(
    client: TestClient, s3: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = queued_job(client)
    prefix = f"tensorboard/default/cooling-{job_id[:8]}"
    first = live(job_id, attempt_of(job_id), s3, tmp_path / "a1")
    for step in (1, 2):
        first.metrics(step, {"heat": float(step)})
        first.flush()
    (key,) = s3.list(prefix)  # the first report is uploaded at once; the second not yet
    assert [s for _, s, _ in our_points([s3.fs.cat_file(f"{s3.root}/{key}")])] == [1]
    monkeypatch.setattr(tb, "REMOTE_UPLOAD_S", 0.0)
    first.metrics(3, {"heat": 3.0})
    first.flush()
    assert [s for _, s, _ in our_points([s3.fs.cat_file(f"{s3.root}/{key}")])] == [1, 2, 3]
    monkeypatch.setattr(tb, "REMOTE_UPLOAD_S", 3600.0)
    first.metrics(4, {"heat": 4.0})
    first.flush()
    first.writer.close()  # type: ignore[attr-defined]  # the attempt ends without the job
    # Attempt 2 on another worker: attempt 1's file is read from the store, not from a disk.
    second = live(job_id, attempt_of(job_id), s3, tmp_path / "a2")
    for step in range(3, 7):
        second.metrics(step, {"heat": 10.0 * step})
        second.flush()
    uri = second.writer.finish()  # type: ignore[attr-defined]
    keys = s3.list(prefix)
    assert uri == s3.url(keys[1]) and keys[1].endswith(".002")
    files = [s3.fs.cat_file(f"{s3.root}/{k}") for k in keys]
    assert [(s, v) for _, s, v in our_points(files)] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0), (6, 60.0)
    ]  # fmt: skip


def test_on_s3_a_finished_job_is_uploaded(client: TestClient, s3: ArtifactStore) -> None:
    job = submit(client, COOLING)
    (key,) = s3.list("tensorboard/default")
    assert key.startswith(f"tensorboard/default/cooling-{job['id'][:8]}/")
    steps = {s for _, s, _ in our_points([s3.fs.cat_file(f"{s3.root}/{key}")])}
    assert steps == set(range(21))
    assert not list((get_settings().data_dir / "work").glob("**/*tfevents*"))  # cleaned up


@pytest.mark.integration
def test_tensorboard_serves_every_run(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    """`tensorboard --logdir <artifacts>/tensorboard/<tenant>` lists each of the tenant's jobs as a
    run, with its scalars."""
    store = ArtifactStore.from_settings(settings)
    ids = [submit(client, {**COOLING, "name": f"cool {i}"})["id"] for i in range(2)]
    runs_expected = [f"cool-{i}-{job_id[:8]}" for i, job_id in enumerate(ids)]
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
        assert sorted(runs) == sorted(runs_expected), (tmp_path / "tensorboard.log").read_text()
        points = httpx.get(
            f"{base}/data/plugin/scalars/scalars",
            params={"run": runs_expected[0], "tag": "temperature/temperature"},
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
