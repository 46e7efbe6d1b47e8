"""Memory of the API serving many models, side by side in one run: a model cache bound large
enough for every model (the default 2 GiB: only the count could evict) and one of a few models'
worth (eviction by size), on the same trained models.

    python bench/memory.py [--quick]

Dense autoencoders and VAEs of different widths are trained on `builtin:digits` through the real
job path (API + worker). For each bound a fresh API process starts with
THERMOML_MODEL_CACHE_BYTES set (the small bound: `Plan.held` models of the mean size the cache
estimates from files) and first warms up TensorFlow and Keras: the runtime every model shares,
which no eviction gives back, and the baseline the bound is compared with. Then `score` and
`encode` run on every model in turn for a few rounds. After each request the bench reads the
process's VmRSS from /proc and the cache's state (models held, their estimated bytes) from a
bench-only route; a model that left the cache was evicted. VmHWM, the kernel's high-water
mark, is the peak. `--quick` runs fewer models and rounds, both bounds at once.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import table, write_report  # noqa: E402
from bench.serving import (  # noqa: E402
    THERMOML,
    api,
    broker,
    free_port,
    process,
    run_jobs,
    wait_ready,
)
from service.inference import MEMORY_PER_FILE_BYTE  # noqa: E402

MIB = 1 << 20
ALL_FIT_BYTES = 2 << 30  # the service's default THERMOML_MODEL_CACHE_BYTES
OPERATIONS = ("score", "encode")


@dataclass(frozen=True)
class Plan:
    models: list[tuple[str, int]]  # (kind, width of both hidden layers)
    rounds: int
    rows: int  # rows per request
    held: float  # models (of mean estimated size) the small bound holds


FULL = Plan(
    models=[("autoencoder", w) for w in (32, 128, 256, 512, 768, 1024, 1280, 1536)]
    + [("vae", w) for w in (384, 1024)],
    rounds=4,
    rows=64,
    held=3.5,
)
QUICK = Plan(models=[("autoencoder", 64), ("vae", 256)], rounds=2, rows=16, held=1.0)


def spec(kind: str, width: int) -> dict[str, Any]:
    return {
        "kind": kind,
        "name": f"{'ae' if kind == 'autoencoder' else kind}-{width}",
        "dataset": "builtin:digits",
        "params": {"hidden": [width, width], "latent_dim": 8, "architecture": "dense"},
        "training": {
            "epochs": 1,
            "batch_size": 256,
            "telemetry": {"every_steps": 1000, "heat": False, "entropy_coordinates": 100},
        },
    }


def train(work: Path, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the training jobs through the API and a worker; the models rows, in `specs` order."""
    env = {"THERMOML_DATA_DIR": str(work)}
    subprocess.run(
        [THERMOML, "migrate"], env={**os.environ, **env}, check=True, capture_output=True
    )
    worker = [THERMOML, "worker", "--queues", "cpu", "--concurrency", "2"]
    with (
        broker(work),
        process(worker, env, work / "worker.log"),
        api(work) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        run_jobs(client, specs)
        by_name = {
            m["name"]: m for m in client.get("/v1/models", params={"limit": 500}).json()["items"]
        }
    return [by_name[s["name"]] for s in specs]


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def rss_mib(pid: int) -> float:
    return memory_kib(pid)["VmRSS"] / 1024


@contextmanager
def bench_api(work: Path, folder: Path, **env: str) -> Iterator[tuple[str, int]]:
    """The API (see `serve`) in its own process, on the models and database under `work` but
    with its own data directory (its own downloaded copy of each model): its URL and pid."""
    port = free_port()
    args = [sys.executable, "bench/memory.py", "--serve", str(port)]
    shared = {
        "THERMOML_DATA_DIR": str(folder),
        "THERMOML_DATABASE_URL": f"sqlite:///{work / 'thermoml.db'}",
        "THERMOML_ARTIFACT_URI": (work / "artifacts").as_uri(),
    }
    with process(args, {**shared, **env}, folder / "api.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/healthz")
        yield url, proc.pid


def serve(port: int) -> None:
    """The thermoml API plus two bench-only routes: the model cache's state, and the runtime's
    warm-up (which the API otherwise does with its first model)."""
    import uvicorn

    from service.config import get_settings
    from service.main import create_app

    app = create_app(get_settings())

    @app.get("/_bench/cache", include_in_schema=False)
    def cache_state() -> dict[str, Any]:
        cache = getattr(app.state, "model_cache", None)
        if cache is None:
            return {"loaded": [], "bytes": 0}
        return {"loaded": [key.split(":")[0] for key in cache.loaded], "bytes": cache.bytes}

    @app.post("/_bench/runtime", include_in_schema=False)
    def runtime() -> dict[str, Any]:
        warm_up()
        gc.collect()
        return {}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def warm_up() -> None:
    """Import TensorFlow and Keras and use them once, on a throwaway model: what the process
    pays once, with its first model, and no eviction gives back."""
    import keras
    import tensorflow as tf

    import ml.anomaly.serving  # noqa: F401  (the serving code of these models)

    throwaway = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)])
    tf.function(lambda x: throwaway(x, training=False))(tf.zeros((1, 4)))


def exercise(
    work: Path, models: list[dict[str, Any]], plan: Plan, label: str, bound: int
) -> dict[str, Any]:
    """Serve every model in turn for `plan.rounds` rounds under a cache bound of `bound` bytes."""
    names = {m["id"]: m["name"] for m in models}
    rng = np.random.default_rng(0)
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    folder = work / f"serve-{bound}"
    folder.mkdir()
    with (
        bench_api(work, folder, THERMOML_MODEL_CACHE_BYTES=str(bound)) as (url, pid),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        baseline = rss_mib(pid)
        client.post("/_bench/runtime").raise_for_status()
        runtime = rss_mib(pid)
        held: set[str] = set()
        for round_ in range(1, plan.rounds + 1):
            for model in models:
                x = rng.random((plan.rows, *model["input_shape"])) * 16
                for operation in OPERATIONS:
                    begun = time.perf_counter()
                    path = f"/v1/models/{model['id']}/{operation}"
                    client.post(path, json={"inputs": x.tolist()}).raise_for_status()
                    seconds = time.perf_counter() - begun
                    rss = rss_mib(pid)
                    state = client.get("/_bench/cache").json()
                    now = set(state["loaded"])
                    samples.append(
                        {
                            "round": round_,
                            "model": model["name"],
                            "operation": operation,
                            "ms": seconds * 1000,
                            "rss_mib": rss,
                            "cache_mib": state["bytes"] / MIB,
                            "loaded": sorted(names[i] for i in now - held),
                            "evicted": sorted(names[i] for i in held - now),
                            "held": sorted(names[i] for i in now),
                        }
                    )
                    held = now
        peak = memory_kib(pid)["VmHWM"] / 1024
    return summarize(label, bound, baseline, runtime, peak, samples) | {
        "seconds": time.perf_counter() - started
    }


def summarize(
    label: str,
    bound: int,
    baseline: float,
    runtime: float,
    peak: float,
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    """One bound's figures from its samples (one per request, in order)."""
    last = {(s["round"], s["model"]): s for s in samples}  # a model's last request per round
    rounds = sorted({s["round"] for s in samples})
    loads = [s["ms"] for s in samples if s["loaded"]]
    return {
        "label": label,
        "bound_mib": bound / MIB,
        "baseline_mib": baseline,
        "runtime_mib": runtime,
        "peak_mib": peak,
        "peak_minus_runtime_mib": peak - runtime,
        "under_bound": peak - runtime <= bound / MIB,
        "loads": sum(len(s["loaded"]) for s in samples),
        "evictions": sum(len(s["evicted"]) for s in samples),
        "load_call_ms_median": statistics.median(loads) if loads else float("nan"),
        "cached_call_ms_median": statistics.median(s["ms"] for s in samples if not s["loaded"]),
        "held_at_end": samples[-1]["held"],
        "cache_estimate_mib": samples[-1]["cache_mib"],
        "cache_max_mib": max(s["cache_mib"] for s in samples),
        "held_max": max(len(s["held"]) for s in samples),
        "rss_max_by_round_mib": [
            max(s["rss_mib"] for s in samples if s["round"] == r) for r in rounds
        ],
        "first_round": [s for (r, _), s in last.items() if r == 1],
        "samples": samples,
    }


def measure(
    work: Path, models: list[dict[str, Any]], plan: Plan, parallel: bool
) -> list[dict[str, Any]]:
    """Both bounds, each in a fresh API process; at once when `parallel` (figures of memory
    do not mind; latencies do)."""
    files = [sum(f["size"] for f in m["files"].values()) for m in models]
    # The small bound: `plan.held` models of the mean size the cache estimates from files.
    small = int(plan.held * MEMORY_PER_FILE_BYTE * statistics.mean(files))
    bounds = {"2 GiB (all fit)": ALL_FIT_BYTES, f"{plan.held:g} x mean model": max(MIB, small)}
    if not parallel:
        return [exercise(work, models, plan, label, b) for label, b in bounds.items()]
    with ThreadPoolExecutor(len(bounds)) as pool:
        runs = [pool.submit(exercise, work, models, plan, label, b) for label, b in bounds.items()]
        return [run.result() for run in runs]


def report(models: list[dict[str, Any]], runs: list[dict[str, Any]], quick: bool) -> None:
    sizes = {m["name"]: sum(f["size"] for f in m["files"].values()) / MIB for m in models}
    rows = []
    for i, model in enumerate(models):
        row = {"model": model["name"], "files_mib": sizes[model["name"]]}
        for run in runs:
            first = run["first_round"][i]
            row[f"RSS_mib [{run['label']}]"] = first["rss_mib"]
            row[f"cache_mib [{run['label']}]"] = first["cache_mib"]
            row[f"held [{run['label']}]"] = len(first["held"])
        rows.append(row)
    print("the API after each model's first score + encode (round 1)")
    print(table(rows, list(rows[0])))
    print("\nper bound (MiB; runtime = RSS once TensorFlow is imported, before any model)")
    columns = [
        "label",
        "bound_mib",
        "baseline_mib",
        "runtime_mib",
        "peak_mib",
        "peak_minus_runtime_mib",
        "under_bound",
        "loads",
        "evictions",
        "held_max",
        "cache_max_mib",
        "load_call_ms_median",
        "cached_call_ms_median",
    ]
    print(table(runs, columns))
    for run in runs:
        after = ", ".join(f"{v:.0f}" for v in run["rss_max_by_round_mib"])
        print(
            f"{run['label']}: highest RSS in each round {after} MiB; held at the end "
            f"({run['cache_estimate_mib']:.1f} MiB estimated): {', '.join(run['held_at_end'])}"
        )
    path = write_report("memory", {"quick": quick, "models_files_mib": sizes, "runs": runs})
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    plan = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = train(work, [spec(kind, width) for kind, width in plan.models])
        runs = measure(work, models, plan, parallel=args.quick)
    report(models, runs, args.quick)


if __name__ == "__main__":
    main()
