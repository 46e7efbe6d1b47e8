"""Submit-to-running and submit-to-finished latency of `cooling` jobs.

Two topologies, side by side in one run: the embedded default (`thermoml up`: SQLite and its
private Redis on a Unix socket) and production (`thermoml api` + `thermoml worker`, Redis +
PostgreSQL). Jobs are submitted one at a time, each after the previous one finished.

    python bench/queue_latency.py [--jobs 40] [--quick]
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import summary_ms, table, write_report

THERMOML = str(Path(sys.executable).with_name("thermoml"))
SPEC = {"kind": "cooling", "params": {"duration": 1.0, "dt": 0.1}}
PG_ADMIN = os.environ.get("THERMOML_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = "redis://127.0.0.1:6379/8"
# The embedded submit-to-running median over kombu's file-system transport (polled every 20 ms),
# before `thermoml up` ran its own Redis server.
FILE_BROKER_MEDIAN_MS = 29.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [THERMOML, *args],
        env={**os.environ, **env},
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
def embedded(work: Path) -> Iterator[str]:
    port = free_port()
    env = {"THERMOML_DATA_DIR": str(work / "embedded")}
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URI"):
        env[f"THERMOML_{name}"] = ""
    up = spawn(["up", "--port", str(port)], env, work / "up.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        yield base
    finally:
        halt(up, signal.SIGINT)


@contextmanager
def production(work: Path) -> Iterator[str]:
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
        [THERMOML, "migrate"], env={**os.environ, **env}, check=True, capture_output=True
    )
    api = spawn(["api", "--port", str(port)], env, work / "api.log")
    worker = spawn(["worker", "--queues", "cpu"], env, work / "worker.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        time.sleep(2)  # let the worker connect
        yield base
    finally:
        halt(api)
        halt(worker)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        redis.Redis.from_url(REDIS).flushdb()


def measure(base: str, jobs: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    to_running: list[float] = []
    to_finished: list[float] = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(jobs + warmup):
            t0 = dt.datetime.now(dt.UTC)
            job = client.post("/v1/jobs", json=SPEC).json()
            while True:
                job = client.get(f"/v1/jobs/{job['id']}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.005)
            if job["status"] != "succeeded":
                raise RuntimeError(f"job failed: {job}")
            if i < warmup:
                continue
            started = dt.datetime.fromisoformat(job["started_at"])
            finished = dt.datetime.fromisoformat(job["finished_at"])
            to_running.append((started - t0).total_seconds())
            to_finished.append((finished - t0).total_seconds())
    return {
        "submit_to_running": summary_ms(to_running),
        "submit_to_finished": summary_ms(to_finished),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="a few jobs, to check it runs")
    args = parser.parse_args()
    jobs = 3 if args.quick else args.jobs
    targets = {"embedded": 100.0, "redis+postgresql": 50.0}
    rows, report = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, topology in (("embedded", embedded), ("redis+postgresql", production)):
            with topology(work) as base:
                result = measure(base, jobs)
            report[name] = {**result, "target_running_median_ms": targets[name]}
            for metric, stats in result.items():
                rows.append({"topology": name, "latency": metric, **stats})
    print(table(rows, ["topology", "latency", "n", "median_ms", "p95_ms", "min_ms", "max_ms"]))
    for name, target in targets.items():
        median = report[name]["submit_to_running"]["median_ms"]
        verdict = "meets" if median <= target else "MISSES"
        print(
            f"{name}: submit-to-running median {median:.1f} ms {verdict} the {target:.0f} ms target"
        )
    embedded_median = report["embedded"]["submit_to_running"]["median_ms"]
    print(
        f"embedded: {embedded_median:.1f} ms on its private Redis against "
        f"{FILE_BROKER_MEDIAN_MS:.0f} ms on the file-system broker before"
    )
    report["embedded"]["file_broker_running_median_ms"] = FILE_BROKER_MEDIAN_MS
    path = write_report("queue_latency", {"jobs": jobs, "spec": SPEC, "results": report})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
