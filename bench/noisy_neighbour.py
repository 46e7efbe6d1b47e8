"""One heavy caller next to light ones: does the API keep serving everybody else?

Topology as bench/load.py: `thermoml api` and one `thermoml worker`, over a private Redis and
PostgreSQL. A diffusion model (T = 1000, the default ε-network) and a small autoencoder are
trained first. Each run has two phases of `--seconds`:

- baseline: `--light` clients send single-row `/score` to the autoencoder as fast as they are
  answered, and one client polls `/healthz` every 50 ms;
- heavy: the same, next to `--heavy` clients that each send `generate` with the largest allowed
  `n` to the diffusion model, again as soon as they have an answer (0.1 s after a refusal, so
  that the benchmark's own client does not spin on the two cores it shares with the API).

Targets (issue "one client cannot take the service down"), on the medians over `--runs` runs:
`/healthz` p99 < 100 ms under the heavy load; light `/score` p99 < 5x its baseline p99; no
light request times out; every heavy request gets its answer or a 503 within its deadline
(`THERMOML_INFERENCE_TIMEOUT` + 10 s); the API's peak resident memory during the heavy phase
< 2x its idle resident memory. The script exits 1 when a request failed otherwise (a 5xx other
than 503, a dropped connection); the targets are reported, not enforced.

    python bench/noisy_neighbour.py [--heavy 50] [--light 16] [--seconds 30] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
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
from bench.load import ENV, MODEL, ROW, train_model  # noqa: E402
from tests.faults.servers import Stack  # noqa: E402

INFERENCE_TIMEOUT_S = 30.0
DIFFUSION = {
    "kind": "diffusion",
    "name": "noisy-diffusion",
    "dataset": "builtin:swiss_roll",
    "params": {"timesteps": 1000},
    "training": {"epochs": 1, "batch_size": 128, "seed": 0},
}
LIGHT_TIMEOUT_S = 10.0
HEALTH_EVERY_S = 0.05
REFUSED_PAUSE_S = 0.1


@dataclass
class Phase:
    health: list[float] = field(default_factory=list)
    light: list[float] = field(default_factory=list)
    heavy: list[float] = field(default_factory=list)
    statuses: dict[str, Counter[int]] = field(
        default_factory=lambda: {k: Counter() for k in ("health", "light", "heavy")}
    )
    timeouts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    late_heavy: int = 0


async def call(
    client: httpx.AsyncClient, phase: Phase, lane: str, method: str, path: str, **kw: Any
) -> int | None:
    started = time.perf_counter()
    try:
        response = await client.request(method, path, **kw)
    except httpx.TimeoutException:
        phase.timeouts[lane] += 1
        return None
    except httpx.TransportError as exc:
        phase.failures.append(f"{lane}: {exc!r}")
        return None
    elapsed = time.perf_counter() - started
    getattr(phase, lane).append(elapsed)
    phase.statuses[lane][response.status_code] += 1
    if response.status_code >= 500 and response.status_code != 503:
        phase.failures.append(f"{lane}: {response.status_code} {response.text[:200]}")
    return response.status_code


async def light_loop(client: httpx.AsyncClient, phase: Phase, deadline: float) -> None:
    body = {"inputs": [ROW]}
    while time.monotonic() < deadline:
        await call(client, phase, "light", "POST", f"/v1/models/{MODEL['name']}/score", json=body)


async def health_loop(client: httpx.AsyncClient, phase: Phase, deadline: float) -> None:
    while time.monotonic() < deadline:
        await call(client, phase, "health", "GET", "/healthz")
        await asyncio.sleep(HEALTH_EVERY_S)


async def heavy_loop(client: httpx.AsyncClient, phase: Phase, deadline: float, n: int) -> None:
    path = f"/v1/models/{DIFFUSION['name']}/generate"
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status = await call(client, phase, "heavy", "POST", path, json={"n": n, "seed": 0})
        if time.perf_counter() - started > INFERENCE_TIMEOUT_S + 10:
            phase.late_heavy += 1
        if status != 200:
            await asyncio.sleep(REFUSED_PAUSE_S)


async def run_phase(url: str, light: int, heavy: int, seconds: float, n: int) -> Phase:
    phase = Phase()
    limits = httpx.Limits(max_connections=light + heavy + 2)
    timeouts = {
        "light": httpx.Timeout(LIGHT_TIMEOUT_S),
        "heavy": httpx.Timeout(INFERENCE_TIMEOUT_S + 10, connect=10.0),
    }
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=timeouts["light"]) as fast,
        httpx.AsyncClient(base_url=url, limits=limits, timeout=timeouts["heavy"]) as slow,
    ):
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            health_loop(fast, phase, deadline),
            *(light_loop(fast, phase, deadline) for _ in range(light)),
            *(heavy_loop(slow, phase, deadline, n) for _ in range(heavy)),
        )
    return phase


def memory_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise LookupError(field_name)


def one_run(stack: Stack, args: argparse.Namespace, n: int) -> dict[str, Any]:
    assert stack.api is not None
    baseline = asyncio.run(run_phase(stack.base_url, args.light, 0, args.seconds, n))
    idle_kib = memory_kib(stack.api.pid, "VmRSS")
    Path(f"/proc/{stack.api.pid}/clear_refs").write_text("5")  # peak from now on
    loaded = asyncio.run(run_phase(stack.base_url, args.light, args.heavy, args.seconds, n))
    peak_kib = memory_kib(stack.api.pid, "VmHWM")
    return {
        "healthz_p99_ms": percentile(loaded.health, 99) * 1000,
        "light_p99_baseline_ms": percentile(baseline.light, 99) * 1000,
        "light_p99_ms": percentile(loaded.light, 99) * 1000,
        "light_per_s_baseline": len(baseline.light) / args.seconds,
        "light_per_s": len(loaded.light) / args.seconds,
        "light_timeouts": baseline.timeouts["light"] + loaded.timeouts["light"],
        "heavy_answered": loaded.statuses["heavy"][200],
        "heavy_refused_503": loaded.statuses["heavy"][503],
        "heavy_other": sum(v for k, v in loaded.statuses["heavy"].items() if k not in (200, 503)),
        "heavy_timeouts": loaded.timeouts["heavy"],
        "heavy_late": loaded.late_heavy,
        "api_idle_mib": idle_kib / 1024,
        "api_peak_mib": peak_kib / 1024,
        "failures": baseline.failures + loaded.failures,
    }


def verdicts(median: dict[str, float]) -> dict[str, bool]:
    return {
        "healthz p99 < 100 ms": median["healthz_p99_ms"] < 100,
        "light p99 < 5x baseline": median["light_p99_ms"] < 5 * median["light_p99_baseline_ms"],
        "no light timeouts": median["light_timeouts"] == 0,
        "heavy answered or 503 in time": median["heavy_timeouts"] + median["heavy_late"] == 0,
        "peak memory < 2x idle": median["api_peak_mib"] < 2 * median["api_idle_mib"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heavy", type=int, default=50)
    parser.add_argument("--light", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 run, 4 + 4 clients, 3 s, n=200")
    args = parser.parse_args()
    n = 10_000  # THERMOML_MAX_GENERATE's default: the largest allowed
    if args.quick:
        args.heavy, args.light, args.seconds, args.runs, n = 4, 4, 3.0, 1, 200
    env = {**ENV, "THERMOML_INFERENCE_TIMEOUT": str(INFERENCE_TIMEOUT_S)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="thermoml-noisy-") as tmp:
        stack = Stack(Path(tmp), env=env)
        try:
            stack.start()
            train_model(stack)
            train_model(stack, DIFFUSION, ("generate", {"n": 1, "seed": 0}))
            for _ in range(args.runs):
                runs.append(one_run(stack, args, n))
        except BaseException:
            stack.dump_logs()
            raise
        finally:
            stack.close()
    numbers = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    median = {k: statistics.median(r[k] for r in runs) for k in numbers}
    checks = verdicts(median)
    print(
        f"{args.heavy} heavy clients (generate n={n}) next to {args.light} light ones (score, "
        f"1 row) and a /healthz poller, {args.seconds:g} s a phase, median of {args.runs} runs:"
    )
    print(table([{"figure": k, "median": v} for k, v in median.items()], ["figure", "median"]))
    verdict = [{"target": k, "met": "yes" if v else "NO"} for k, v in checks.items()]
    print(table(verdict, ["target", "met"]))
    failures = [f for r in runs for f in r["failures"]]
    if failures:
        print(f"FAILED: {len(failures)} requests failed; first: {failures[:5]}")
    path = write_report(
        "noisy_neighbour",
        {
            "quick": args.quick,
            "heavy_clients": args.heavy,
            "light_clients": args.light,
            "generate_n": n,
            "seconds_per_phase": args.seconds,
            "inference_timeout_s": INFERENCE_TIMEOUT_S,
            "median": median,
            "targets_met": checks,
            "runs": runs,
        },
    )
    print(f"wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
