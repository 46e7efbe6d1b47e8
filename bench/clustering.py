"""Clustering quality and time: thermoml's `kmeans`, `dec` and `annealing` next to scikit-learn's
KMeans, on `digits` (10 classes) and `eight_gaussians` (8), by ARI and NMI against the labels.

Every method sees the same rows, scaled as thermoml scales them (scikit-learn gets the scaled
rows); the number of clusters is the number of classes. Seconds are wall time of the whole job
(TensorFlow imported beforehand; graph tracing included, as a job pays it).

    python bench/clustering.py [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from bench.common import table, write_report
from ml.core.datasets import Dataset, load_builtin
from ml.core.preprocessing import Scaler
from ml.core.registry import get_kind
from ml.core.reporting import MemoryReporter, RunContext

DEC: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {
        "params": {"latent_dim": 10, "hidden": [256, 64], "pretrain_epochs": 50},
        "preprocessing": {"scale": "minmax"},
        "training": {"epochs": 30, "batch_size": 128},
    },
    "eight_gaussians": {
        "params": {"latent_dim": 2, "hidden": [32, 32], "pretrain_epochs": 10},
        "training": {"epochs": 10, "batch_size": 256},
    },
}
QUICK_ROWS = 1000


def run_kind(kind: str, spec: dict[str, Any], data: Dataset) -> tuple[dict[str, Any], float]:
    k = get_kind(kind)
    parsed = k.spec.model_validate({"kind": kind, "dataset": f"builtin:{data.name}", **spec})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(Path(tmp) / "w", Path(tmp) / "c", data)
        ctx.workdir.mkdir()
        ctx.checkpoint_dir.mkdir()
        started = time.perf_counter()
        outcome = k.run(parsed, MemoryReporter(), ctx)
        seconds = time.perf_counter() - started
    assert outcome.model is not None
    return outcome.model.evaluation, seconds


def specs(name: str, k: int, seed: int, quick: bool) -> dict[str, dict[str, Any]]:
    dec: dict[str, dict[str, Any]] = {key: dict(value) for key, value in DEC[name].items()}
    dec["params"] = {**dec["params"], "n_clusters": k}
    dec["training"] = {**dec["training"], "seed": seed}
    if quick:  # a smoke run: the numbers mean little, and no telemetry graphs are traced
        dec["params"]["pretrain_epochs"] = 2
        dec["training"].update(epochs=1, telemetry={"every_steps": 10**6})
    return {
        "kmeans": {"params": {"n_clusters": k, "n_init": 1 if quick else 10, "seed": seed}},
        "dec": dec,
        "annealing": {"params": {"max_clusters": k, "seed": seed}},
    }


def sklearn_kmeans(data: Dataset, k: int, seed: int, quick: bool) -> tuple[dict[str, Any], float]:
    scaler = Scaler("standard").fit(data.x)
    x = scaler.transform(data.x.astype(np.float32)).reshape(data.rows, -1)
    started = time.perf_counter()
    labels = KMeans(k, n_init=1 if quick else 10, random_state=seed).fit(x).labels_
    seconds = time.perf_counter() - started
    scores = {
        "ari": float(adjusted_rand_score(data.y, labels)),
        "nmi": float(normalized_mutual_info_score(data.y, labels)),
    }
    return scores, seconds


def subsample(data: Dataset, rows: int) -> Dataset:
    if data.rows <= rows:
        return data
    keep = np.sort(np.random.default_rng(0).choice(data.rows, size=rows, replace=False))
    assert data.y is not None
    return Dataset(x=data.x[keep], y=data.y[keep], name=data.name, label_type=data.label_type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one seed, small runs: seconds")
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    import ml.core.training  # noqa: F401  (TensorFlow's import is not part of any method's time)

    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"seeds": seeds, "quick": args.quick, "results": {}}
    for name, k in (("eight_gaussians", 8), ("digits", 10)):
        data = load_builtin(name)
        if args.quick:
            data = subsample(data, QUICK_ROWS)
        measured: dict[str, list[tuple[dict[str, Any], float]]] = {}
        for seed in range(seeds):
            for kind, spec in specs(name, k, seed, args.quick).items():
                measured.setdefault(f"thermoml {kind}", []).append(run_kind(kind, spec, data))
            measured.setdefault("sklearn KMeans", []).append(
                sklearn_kmeans(data, k, seed, args.quick)
            )
        report["results"][name] = {
            method: [{"ari": s["ari"], "nmi": s["nmi"], "seconds": t} for s, t in runs]
            for method, runs in measured.items()
        }
        for method, runs in measured.items():
            rows.append(
                {
                    "data": f"{name} ({data.rows} rows)",
                    "method": method,
                    "ari": f"{statistics.mean(s['ari'] for s, _ in runs):.3f}",
                    "nmi": f"{statistics.mean(s['nmi'] for s, _ in runs):.3f}",
                    "seconds": f"{statistics.mean(t for _, t in runs):.2f}",
                    "seeds": len(runs),
                }
            )
    print(table(rows, ["data", "method", "ari", "nmi", "seconds", "seeds"]))
    print(f"wrote {write_report('clustering', report)}")


if __name__ == "__main__":
    main()
