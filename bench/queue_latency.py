"""Submit-to-running and submit-to-finished latency of `cooling` jobs.

Two topologies, side by side in one run: the embedded default (`thermoml up`: SQLite and its
private Redis on a Unix socket) and production (`thermoml api` + `thermoml worker`, Redis +
PostgreSQL). Jobs are submitted one at a time, each after the previous one finished, so the
worker takes each job right after the previous one: what a queue of jobs sees. The wait is
split where the API records the job as published: submit -> published (the API's insert,
commit and publish) and published -> running (broker delivery, the worker's fork and claim).

    python bench/queue_latency.py [--jobs 40] [--quick] [--topology embedded]
        [--tree PATH]   # run another checkout's thermoml (e.g. an older commit), to compare
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import summary_ms, table, write_report

THERMOML = str(Path(sys.executable).with_name("thermoml"))
TREE: Path | None = None  # --tree: the checkout whose code the processes run
SPEC = {"kind": "cooling", "params": {"duration": 1.0, "dt": 0.1}}
PG_ADMIN = os.environ.get("THERMOML_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = "redis://127.0.0.1:6379/8"
# The embedded submit-to-running median over kombu's file-system transport (polled every 20 ms),
# before `thermoml up` ran its own Redis server.
FILE_BROKER_MEDIAN_MS = 29.0
JOB_TIMEOUT = 60.0  # seconds; a job not ended by then means a stuck worker, not a slow one
WARMUP_TIMEOUT = 180.0  # the first jobs also wait for the worker to start on a loaded machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a thermoml process: `env`, and --tree's code ahead of this one's."""
    if TREE is None:
        return {**os.environ, **env}
    return {**os.environ, **env, "PYTHONPATH": str(TREE)}


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args] if TREE else [THERMOML, *args],
        env=tree_env(env),
        cwd=TREE,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def halt(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def wait_ready(base: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{base} did not become ready")


@contextmanager
def embedded(work: Path) -> Iterator[tuple[str, str]]:
    """`thermoml up`; the API's URL and the database's."""
    port = free_port()
    env = {"THERMOML_DATA_DIR": str(work / "embedded")}
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URI"):
        env[f"THERMOML_{name}"] = ""
    up = spawn(["up", "--port", str(port)], env, work / "up.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        yield base, f"sqlite:///{work / 'embedded' / 'thermoml.db'}"
    finally:
        halt(up, signal.SIGINT)


@contextmanager
def production(work: Path) -> Iterator[tuple[str, str]]:
    import psycopg
    import redis

    name = f"thermoml_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(REDIS).flushdb()
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    port = free_port()
    env = {
        "THERMOML_DATABASE_URL": url,
        "THERMOML_BROKER_URL": REDIS,
        "THERMOML_DATA_DIR": str(work / "production"),
    }
    subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate"],
        env=tree_env(env),
        cwd=TREE,
        check=True,
        capture_output=True,
    )
    api = spawn(["api", "--port", str(port)], env, work / "api.log")
    worker = spawn(["worker", "--queues", "cpu"], env, work / "worker.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        time.sleep(2)  # let the worker connect
        yield base, url
    finally:
        halt(api)
        halt(worker)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis.from_url(REDIS).flushdb()


def published_at(database_url: str, ids: list[str]) -> dict[str, dt.datetime]:
    """When the API recorded each job as published (not in the job's JSON: read the row)."""
    from sqlalchemy import select

    from service.db.session import make_engine
    from service.db.tables import Job

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Job.id, Job.published_at).where(Job.id.in_(ids))).all()
    finally:
        engine.dispose()
    return {str(job_id): when for job_id, when in rows if when is not None}


def measure(base: str, database_url: str, jobs: int, warmup: int = 2) -> dict[str, Any]:
    to_running: list[float] = []
    to_finished: list[float] = []
    submitted: dict[str, tuple[dt.datetime, dt.datetime]] = {}  # id: (submit, running)
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(jobs + warmup):
            t0 = dt.datetime.now(dt.UTC)
            job = client.post("/v1/jobs", json=SPEC).json()
            timeout = WARMUP_TIMEOUT if i < warmup else JOB_TIMEOUT
            deadline = time.monotonic() + timeout
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job not ended within {timeout:g} s: {job}")
                time.sleep(0.005)
                job = client.get(f"/v1/jobs/{job['id']}").json()
            if job["status"] != "succeeded":
                raise RuntimeError(f"job failed: {job}")
            if i < warmup:
                continue
            started = dt.datetime.fromisoformat(job["started_at"])
            finished = dt.datetime.fromisoformat(job["finished_at"])
            to_running.append((started - t0).total_seconds())
            to_finished.append((finished - t0).total_seconds())
            submitted[job["id"]] = (t0, started)
    published = published_at(database_url, list(submitted))
    return {
        "submit_to_published": summary_ms(
            [(published[j] - t0).total_seconds() for j, (t0, _) in submitted.items()]
        ),
        "published_to_running": summary_ms(
            [(run - published[j]).total_seconds() for j, (_, run) in submitted.items()]
        ),
        "submit_to_running": summary_ms(to_running),
        "submit_to_finished": summary_ms(to_finished),
    }


TOPOLOGIES = {"embedded": embedded, "redis+postgresql": production}
TARGETS = {"embedded": 100.0, "redis+postgresql": 50.0}


def main() -> None:
    global TREE
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="a few jobs, to check it runs")
    parser.add_argument("--topology", choices=sorted(TOPOLOGIES), action="append")
    parser.add_argument("--tree", type=Path, help="run this checkout's thermoml instead")
    args = parser.parse_args()
    TREE = args.tree.resolve() if args.tree else None
    jobs = 3 if args.quick else args.jobs
    names = args.topology or list(TOPOLOGIES)
    rows, report = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            work = Path(tmp) / name.replace("+", "_")  # each topology's files and logs apart
            work.mkdir()
            try:
                with TOPOLOGIES[name](work) as (base, database_url):
                    result = measure(base, database_url, jobs)
            except RuntimeError:
                for log in sorted(work.glob("*.log")):  # what the service said, for the reader
                    tail = log.read_text(errors="replace")[-3000:]
                    print(f"--- {name}: {log.name}:\n{tail}", file=sys.stderr)
                raise
            report[name] = {**result, "target_running_median_ms": TARGETS[name]}
            for metric, stats in result.items():
                rows.append({"topology": name, "latency": metric, **stats})
    print(table(rows, ["topology", "latency", "n", "median_ms", "p95_ms", "min_ms", "max_ms"]))
    for name in names:
        median, target = report[name]["submit_to_running"]["median_ms"], TARGETS[name]
        verdict = "meets" if median <= target else "MISSES"
        print(
            f"{name}: submit-to-running median {median:.1f} ms {verdict} the {target:.0f} ms target"
        )
    if "embedded" in report:
        median = report["embedded"]["submit_to_running"]["median_ms"]
        verdict = "no slower than" if median <= FILE_BROKER_MEDIAN_MS else "SLOWER than"
        print(
            f"embedded: {median:.1f} ms on its private Redis, {verdict} the "
            f"{FILE_BROKER_MEDIAN_MS:.0f} ms of the file-system broker before (that figure is "
            "from an earlier run: compare side by side with --tree on an older checkout)"
        )
        report["embedded"]["file_broker_running_median_ms"] = FILE_BROKER_MEDIAN_MS
    tree = str(TREE) if TREE else None
    path = write_report(
        "queue_latency", {"jobs": jobs, "spec": SPEC, "tree": tree, "results": report}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
