"""Live events under load: many SSE clients watching one running job of a real `thermoml up`.

For each scenario a fresh `langevin` job runs (the same spec each time) while the clients watch:
no client; one SSE client; N SSE clients (all on one shared poller); and, for contrast, N clients
each polling `GET /v1/jobs/{id}` and `GET /v1/jobs/{id}/metrics?since_step=` every 0.25 s (what
the shared poller replaces). Measured:

- delivery delay of each `metrics` event: client receipt minus the `recorded_at` of the newest
  point in it (set by the worker when it wrote the batch, before its commit), median and p99;
  the share of it spent before the server read the points (`read_at`) is shown too;
- the API process's CPU time per second of the job (utime + stime from /proc/<pid>/stat), which
  is the cost of the watchers (the job itself runs in the worker's process);
- that every client got every point and the `end` event.

    python bench/events.py [--clients 100] [--quick]    (full: ~4 min; quick: ~20 s)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import percentile, table, write_report

THERMOML = str(Path(sys.executable).with_name("thermoml"))
POLL_S = 0.25


def job_spec(quick: bool) -> dict[str, Any]:
    steps, walkers = (2000, 5000) if quick else (40000, 20000)
    return {
        "kind": "langevin",
        "name": "bench-events",
        "params": {"steps": steps, "walkers": walkers, "integrator": "euler_maruyama", "seed": 0},
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_time(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


async def sse_client(client: httpx.AsyncClient, job_id: str, out: dict[str, Any]) -> None:
    delays, read_delays, points = out["delays"], out["read_delays"], 0
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        response.raise_for_status()
        kind, data = "", ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                now = time.time()
                if kind == "metrics":
                    body = json.loads(data)
                    recorded = parse_time(body["recorded_at"])
                    delays.append(now - recorded)
                    read_delays.append(parse_time(body["read_at"]) - recorded)
                    points += sum(len(s["steps"]) for s in body["series"].values())
                elif kind == "end":
                    out["ended"] = True
                    break
                data = ""
    out["points"] = points


async def polling_client(client: httpx.AsyncClient, job_id: str, out: dict[str, Any]) -> None:
    since: dict[str, int] = {}
    points = 0
    while True:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        last = min(since.values()) if since else None
        params = {"since_step": last} if last is not None else {}
        series = (await client.get(f"/v1/jobs/{job_id}/metrics", params=params)).json()["series"]
        for name, s in series.items():
            fresh = [st for st in s["steps"] if st > since.get(name, -1)]
            points += len(fresh)
            if s["steps"]:
                since[name] = max(since.get(name, -1), s["steps"][-1])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            out["ended"] = True
            break
        await asyncio.sleep(POLL_S)
    out["points"] = points


async def scenario(base: str, pid: int, spec: dict[str, Any], mode: str, n: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    timeout = httpx.Timeout(60.0, read=None)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        job = (await client.post("/v1/jobs", json=spec)).json()
        while (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "queued":
            await asyncio.sleep(0.02)
        outs: list[dict[str, Any]] = [
            {"delays": [], "read_delays": [], "ended": False, "points": 0} for _ in range(n)
        ]
        make = sse_client if mode == "sse" else polling_client
        cpu0, wall0 = cpu_seconds(pid), time.monotonic()
        tasks = [asyncio.create_task(make(client, job["id"], out)) for out in outs]
        while True:
            done = (await client.get(f"/v1/jobs/{job['id']}")).json()
            if done["status"] in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        cpu1, wall1 = cpu_seconds(pid), time.monotonic()
        if done["status"] != "succeeded":
            raise RuntimeError(f"the bench job failed: {done['error']}")
        total = sum(
            len(s["steps"])
            for s in (await client.get(f"/v1/jobs/{job['id']}/metrics")).json()["series"].values()
        )
    delays = [d for out in outs for d in out["delays"]]
    read_delays = [d for out in outs for d in out["read_delays"]]
    complete = sum(out["ended"] and out["points"] == total for out in outs)
    row: dict[str, Any] = {
        "mode": mode if n else "no watcher",
        "clients": n,
        "job_s": wall1 - wall0,
        "api_cpu_s": cpu1 - cpu0,
        "api_cpu_pct": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        "complete": f"{complete}/{n}",
        "points": total,
    }
    if delays:
        row.update(
            {
                "events": len(delays),
                "delay_median_ms": 1000 * statistics.median(delays),
                "delay_p99_ms": 1000 * percentile(delays, 99),
                "to_read_median_ms": 1000 * statistics.median(read_delays),
            }
        )
    return row


def run(clients: int, quick: bool, work: Path) -> list[dict[str, Any]]:
    port = free_port()
    env = {
        **os.environ,
        "THERMOML_DATA_DIR": str(work / "state"),
        "THERMOML_DATABASE_URL": "",
        "THERMOML_BROKER_URL": "",
        "THERMOML_ARTIFACT_URI": "",
        "THERMOML_AUTH": "disabled",
    }
    log = (work / "up.log").open("wb")
    up = subprocess.Popen(
        [THERMOML, "up", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"thermoml did not start; see {work / 'up.log'}")
            time.sleep(0.1)
        spec = job_spec(quick)
        if quick:  # one scenario, to check that it all works
            scenarios = [("sse", clients)]
        else:
            # A first job warms the worker (imports, JIT) so that every scenario runs alike.
            asyncio.run(scenario(base, up.pid, spec, "sse", 0))
            scenarios = [("sse", 0), ("sse", 1), ("sse", clients), ("poll", clients)]
        for mode, n in scenarios:
            row = asyncio.run(scenario(base, up.pid, spec, mode, n))
            rows.append(row)
            print(f"  {row['mode']} x{n}: {row['complete']} complete", flush=True)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="20 SSE clients on a short job")
    args = parser.parse_args()
    clients = min(args.clients, 20) if args.quick else args.clients
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(clients, args.quick, Path(tmp))
    columns = [
        "mode",
        "clients",
        "job_s",
        "api_cpu_pct",
        "events",
        "delay_median_ms",
        "delay_p99_ms",
        "to_read_median_ms",
        "complete",
    ]
    print(table(rows, columns))
    path = write_report(
        "events",
        {
            "clients": clients,
            "quick": args.quick,
            "spec": job_spec(args.quick),
            "poll_interval_s": POLL_S,
            "results": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
