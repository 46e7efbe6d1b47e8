"""Mixed load on the production topology: many concurrent clients submit, read and score.

Topology: `thermoml api` and one `thermoml worker --queues cpu`, over a private Redis and a
private PostgreSQL (tests/faults/servers.py: free ports on 127.0.0.1, state in temporary
folders, stopped afterwards; the machine's own servers are never used). One small autoencoder
is trained first; then `--clients` clients (200 by default) send requests for `--seconds` (60)
as fast as they are answered, each picking at random:

- submit (`POST /v1/jobs`, a small `cooling` job),
- status (`GET /v1/jobs/{id}` of a job submitted before),
- score (`POST /v1/models/{ref}/score`, one row).

Reports throughput, p50/p99 per kind of request, and the counts of 5xx answers, timeouts and
dropped connections (each must be 0: the script exits 1 otherwise) and of 429s (the per-key
caps are raised so that the load stays within them).

    python bench/load.py [--clients 200] [--seconds 60] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import percentile, table, write_report  # noqa: E402
from tests.faults.servers import Stack, wait_until  # noqa: E402

MIX = {"submit": 0.2, "status": 0.5, "score": 0.3}
SUBMIT = {"kind": "cooling", "params": {"method": "rk4", "duration": 1.0, "dt": 0.1}}
MODEL = {
    "kind": "autoencoder",
    "name": "load-ae",
    "dataset": "builtin:breast_cancer",
    "params": {"latent_dim": 4, "hidden": [32, 16]},
    "training": {"epochs": 3, "batch_size": 32, "seed": 0},
}
# One breast-cancer row in raw units (the README's example).
ROW = [
    17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
    1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193,
    25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189,
]  # fmt: skip
REQUEST_TIMEOUT_S = 30.0
# Production-like reconciler settings (not the fault tests' short ones), and per-key caps high
# enough that the load stays within them (the caps count queued jobs, which pile up here).
ENV = {
    "THERMOML_JOB_LEASE": "60",
    "THERMOML_REPUBLISH_INTERVAL": "5",
    "THERMOML_LOST_MESSAGE_GRACE": "10",
    "THERMOML_PUBLISH_TIMEOUT": "2",
    "THERMOML_MAX_QUEUED_JOBS_PER_KEY": "1000000",
    "THERMOML_MAX_RUNNING_JOBS_PER_KEY": "1000",
}


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in MIX})
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: {k: Counter() for k in MIX})
    timeouts: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


async def client_loop(
    client: httpx.AsyncClient,
    deadline: float,
    tally: Tally,
    job_ids: list[str],
    model: str,
    rng: random.Random,
) -> None:
    kinds, weights = list(MIX), list(MIX.values())
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        started = time.perf_counter()
        try:
            if kind == "submit":
                response = await client.post("/v1/jobs", json=SUBMIT)
            elif kind == "status":
                response = await client.get(f"/v1/jobs/{rng.choice(job_ids)}")
            else:
                response = await client.post(f"/v1/models/{model}/score", json={"inputs": [ROW]})
        except httpx.TimeoutException as exc:
            tally.timeouts[kind] += 1
            tally.errors.append(f"{kind}: {exc!r}")
            continue
        except httpx.TransportError as exc:  # reset, refused, closed mid-answer
            tally.dropped[kind] += 1
            tally.errors.append(f"{kind}: {exc!r}")
            continue
        tally.latencies[kind].append(time.perf_counter() - started)
        tally.statuses[kind][response.status_code] += 1
        if response.status_code >= 500:
            tally.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
        elif kind == "submit" and response.status_code == 202:
            job_ids.append(response.json()["id"])


async def run_load(
    base_url: str, clients: int, seconds: float, seed_job: str
) -> tuple[Tally, float]:
    tally = Tally()
    job_ids = [seed_job]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(
            *(
                client_loop(client, deadline, tally, job_ids, str(MODEL["name"]), random.Random(i))
                for i in range(clients)
            )
        )
        elapsed = time.monotonic() - started
    return tally, elapsed


def train_model(
    stack: Stack, spec: dict[str, Any] = MODEL, warm: tuple[str, dict[str, Any]] | None = None
) -> str:
    """Train `spec` through the API, then make one call (`warm`: operation and body; a score of
    ROW by default) so that loading the model (and TensorFlow) is not part of the load."""
    operation, body = warm or ("score", {"inputs": [ROW]})
    with stack.client(timeout=30) as client:
        response = client.post("/v1/jobs", json=spec)
        response.raise_for_status()
        job_id = response.json()["id"]

        def done() -> dict[str, Any] | None:
            job = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = wait_until(done, 600, f"the training job of {spec['name']}", every=0.5)
        if job["status"] != "succeeded":
            raise RuntimeError(f"training failed: {job}")
        warmed = client.post(f"/v1/models/{spec['name']}/{operation}", json=body, timeout=300)
        warmed.raise_for_status()
    return job_id


def drain_summary(stack: Stack) -> dict[str, int]:
    """How many of the jobs are finished, queued, running (the worker is slower than the load)."""
    import psycopg

    with psycopg.connect(stack.postgres.dsn) as conn:
        rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    return {status: int(count) for status, count in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="20 clients for 5 s")
    args = parser.parse_args()
    clients, seconds = (20, 5.0) if args.quick else (args.clients, args.seconds)

    with tempfile.TemporaryDirectory(prefix="thermoml-load-") as tmp:
        stack = Stack(Path(tmp), env=ENV)
        try:
            stack.start()
            seed_job = train_model(stack)
            tally, elapsed = asyncio.run(run_load(stack.base_url, clients, seconds, seed_job))
            jobs = drain_summary(stack)
        except BaseException:
            stack.dump_logs()
            raise
        finally:
            stack.close()

    rows: list[dict[str, Any]] = []
    per_kind: dict[str, Any] = {}
    for kind in MIX:
        latencies = tally.latencies[kind]
        statuses = tally.statuses[kind]
        row = {
            "request": kind,
            "n": len(latencies),
            "per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "5xx": sum(v for k, v in statuses.items() if k >= 500),
            "429": statuses.get(429, 0),
            "timeouts": tally.timeouts[kind],
            "dropped": tally.dropped[kind],
        }
        rows.append(row)
        per_kind[kind] = {**row, "statuses": {str(k): v for k, v in sorted(statuses.items())}}
    everything = [v for values in tally.latencies.values() for v in values]
    total: dict[str, Any] = {
        "request": "all",
        "n": len(everything),
        "per_s": len(everything) / elapsed,
        "p50_ms": percentile(everything, 50) * 1000,
        "p99_ms": percentile(everything, 99) * 1000,
        **{k: sum(r[k] for r in rows) for k in ("5xx", "429", "timeouts", "dropped")},
    }
    rows.append(total)
    print(
        f"{clients} clients for {elapsed:.1f} s against thermoml api + 1 worker, "
        "private Redis + PostgreSQL:"
    )
    print(
        table(
            rows, ["request", "n", "per_s", "p50_ms", "p99_ms", "5xx", "429", "timeouts", "dropped"]
        )
    )
    print(f"jobs by status afterwards: {jobs}")
    failures = total["5xx"] + total["timeouts"] + total["dropped"]
    if failures:
        print(f"FAILED: {failures} requests failed; first: {tally.errors[:5]}")
    path = write_report(
        "load",
        {
            "quick": args.quick,
            "topology": "thermoml api + thermoml worker --queues cpu; private redis-server and "
            "PostgreSQL on 127.0.0.1",
            "clients": clients,
            "seconds": round(elapsed, 2),
            "mix": MIX,
            "total": total,
            "requests": per_kind,
            "jobs_by_status_after": jobs,
            "errors": tally.errors[:20],
        },
    )
    print(f"wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
