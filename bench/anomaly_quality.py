"""Anomaly-detection quality: every detector thermoml trains, on the same splits.

Each split is one `detector_comparison` job (run in-process): the classical detectors
(isolation forest, one-class SVM, local outlier factor, ECOD), `pca`, `autoencoder` and `vae`,
each trained as its own kind on the same normal rows, calibrated on the same held-out normal
rows and scored on the same labelled rows (ROC-AUC).

Splits: `breast_cancer` (malignant is the anomaly) with seeds 0-4; `digits` with each digit in
turn as the normal class (the other nine are anomalies); `wine` with each cultivar in turn as
the anomaly. Reported per detector: the mean ROC-AUC over all splits and per data set, the
mean rank (1 = best on a split, ties averaged), the worst split, and the splits on which it is
more than 0.01 below the best detector.

    python bench/anomaly_quality.py [--quick] [--epochs 30] [--detectors a b ...]
        [--ensemble a b ...] [--combinations zscore-mean rank-max ...]
        [--autoencoder-params JSON] [--vae-params JSON] [--training JSON]
        [--weights-seed-offset N]

`--autoencoder-params`, `--vae-params` and `--training` try settings other than the kinds'
defaults: the `autoencoder` / `vae` detectors then run as their own kinds (not inside the
comparison, whose members take their kind's defaults) with those params and `training` fields
added to the comparison's epochs, seed and validation split, on the same splits.
`--weights-seed-offset N` draws the deep detectors' initial weights from the split's seed + N
(the kinds' `training.seed` sets the split, the batches' order and the initial weights alike).

Also measured: `ensemble` jobs of `--ensemble` members (default: the classical detectors and
`pca`), for each `--combinations` pair (default z-score and rank, both averaged), on the same
splits. `--quick` (for `bench/run_all.py --quick`): the classical detectors, `pca` and their
ensembles on one split of each data set, in well under a minute.
"""

from __future__ import annotations

import argparse
import json
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
from scipy.stats import rankdata

from bench.common import table, write_report
from ml.anomaly.comparison import CLASSICAL
from ml.core.datasets import Dataset, load_builtin
from ml.core.registry import get_kind
from ml.core.reporting import MemoryReporter, RunContext

ALL = [*CLASSICAL, "pca", "autoencoder", "vae"]
QUICK = [*CLASSICAL, "pca"]
CLOSE = 0.01  # "never more than 0.01 below the best single method"


def splits(quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(data set, split name, params) of every split."""
    seeds = [0] if quick else list(range(5))
    digits = [0] if quick else list(range(10))
    cultivars = [0] if quick else [0, 1, 2]
    return [
        *[("breast_cancer", f"seed {s}", {"anomaly_label": 1, "seed": s}) for s in seeds],
        *[("digits", f"normal {d}", {"normal_label": d}) for d in digits],
        *[("wine", f"anomaly {c}", {"anomaly_label": c}) for c in cultivars],
    ]


def compare(data: Dataset, params: dict[str, Any]) -> dict[str, float]:
    """ROC-AUC of each detector on one split (one `detector_comparison` job, in-process)."""
    kind = get_kind("detector_comparison")
    spec = kind.spec.model_validate(
        {"kind": kind.name, "dataset": f"builtin:{data.name}", "params": params}
    )
    with tempfile.TemporaryDirectory() as tmp:
        context = RunContext(Path(tmp) / "w", Path(tmp) / "c", data)
        context.workdir.mkdir()
        context.checkpoint_dir.mkdir()
        outcome = kind.run(spec, MemoryReporter(), context)
    return {r["detector"]: float(r["roc_auc"]) for r in outcome.result["detectors"]}


def deep_kind(
    data: Dataset, kind_name: str, params: dict[str, Any], own: dict[str, Any], training: dict
) -> float:
    """ROC-AUC of the `autoencoder` or `vae` kind with its `own` params and `training` fields on
    the split of `params` (the comparison's: same seed, validation and evaluation rows)."""
    kind = get_kind(kind_name)
    shared = {k: v for k, v in params.items() if k not in ("detectors", "epochs", "seed")}
    body = {
        "kind": kind.name,
        "dataset": f"builtin:{data.name}",
        "params": {**own, **shared},
        "training": {
            "epochs": params["epochs"],
            "seed": params.get("seed", 0),
            "validation_split": 0.1,
            **training,
        },
    }
    spec = kind.spec.model_validate(body)
    with tempfile.TemporaryDirectory() as tmp:
        context = RunContext(Path(tmp) / "w", Path(tmp) / "c", data)
        context.workdir.mkdir()
        context.checkpoint_dir.mkdir()
        outcome = kind.run(spec, MemoryReporter(), context)
    assert outcome.model is not None
    return float(outcome.model.evaluation["roc_auc"])


def reseed_weights(offset: int) -> None:
    """Draw the initial weights of the networks trained from here on from `training.seed` +
    `offset`: Keras is reseeded after the kinds seed it, the split and batches unchanged."""
    import keras

    from ml.core import training

    seeded = training.configure_determinism

    def reseeded(config: Any) -> None:
        seeded(config)
        keras.utils.set_random_seed(config.seed + offset)

    training.configure_determinism = reseeded  # type: ignore[assignment]


def ensemble(data: Dataset, params: dict[str, Any], members: list[str], how: str) -> float:
    """ROC-AUC of an `ensemble` job of `members` on the same split (`how`: standardise-combine)."""
    kind = get_kind("ensemble")
    standardise, combine = how.split("-")
    body = {
        **{k: v for k, v in params.items() if k != "detectors"},
        "members": [{"detector": m} for m in members],
        "standardise": standardise,
        "combine": combine,
    }
    spec = kind.spec.model_validate(
        {"kind": kind.name, "dataset": f"builtin:{data.name}", "params": body}
    )
    with tempfile.TemporaryDirectory() as tmp:
        context = RunContext(Path(tmp) / "w", Path(tmp) / "c", data)
        context.workdir.mkdir()
        context.checkpoint_dir.mkdir()
        outcome = kind.run(spec, MemoryReporter(), context)
    return float(outcome.result["roc_auc"])


def best_single(run: dict[str, Any]) -> float:
    return max(v for k, v in run["roc_auc"].items() if not k.startswith("ensemble"))


def summarise(runs: list[dict[str, Any]], detectors: list[str]) -> list[dict[str, Any]]:
    """Per detector: mean ROC-AUC (all splits, per data set), mean rank, worst split, and the
    splits more than CLOSE below that split's best single detector (not an ensemble)."""
    ranks = [
        dict(zip(detectors, rankdata([-r["roc_auc"][d] for d in detectors]), strict=True))
        for r in runs
    ]
    rows = []
    for d in detectors:
        aucs = [r["roc_auc"][d] for r in runs]
        behind = [r for r in runs if best_single(r) - r["roc_auc"][d] > CLOSE]
        row = {
            "detector": d,
            "mean_roc_auc": statistics.mean(aucs),
            "mean_rank": statistics.mean(float(rank[d]) for rank in ranks),
            "worst": min(aucs),
            "behind_best": len(behind),
        }
        for name in dict.fromkeys(r["data"] for r in runs):
            row[name] = statistics.mean(r["roc_auc"][d] for r in runs if r["data"] == name)
        rows.append(row)
    return sorted(rows, key=lambda row: (row["mean_rank"], -row["mean_roc_auc"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int, default=30, help="autoencoder and vae")
    parser.add_argument("--detectors", nargs="*", default=None)
    parser.add_argument(
        "--ensemble",
        nargs="*",
        default=None,
        help="members of the ensembles measured (default: the classical detectors and pca)",
    )
    parser.add_argument(
        "--combinations",
        nargs="*",
        default=["zscore-mean", "rank-mean"],
        help="standardise-combine pairs of the ensembles (zscore|rank)-(mean|max)",
    )
    parser.add_argument("--autoencoder-params", type=json.loads, default=None, metavar="JSON")
    parser.add_argument("--vae-params", type=json.loads, default=None, metavar="JSON")
    parser.add_argument(
        "--training", type=json.loads, default=None, metavar="JSON", help="autoencoder and vae"
    )
    parser.add_argument("--weights-seed-offset", type=int, default=0, metavar="N")
    parser.add_argument(
        "--report", default="anomaly_quality", help="bench/results/<REPORT>.json is written"
    )
    args = parser.parse_args()
    detectors = args.detectors or (QUICK if args.quick else ALL)
    own = {"autoencoder": args.autoencoder_params, "vae": args.vae_params}
    variants = any(v is not None for v in (*own.values(), args.training))
    apart = [d for d in detectors if d in own and variants]
    together = [d for d in detectors if d not in apart]
    members = QUICK if args.ensemble is None else args.ensemble
    if args.weights_seed_offset:
        reseed_weights(args.weights_seed_offset)
    datasets = {name: load_builtin(name) for name in ("breast_cancer", "digits", "wine")}
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name, split, params in splits(args.quick):
        params = {**params, "detectors": together, "epochs": args.epochs}
        aucs = compare(datasets[name], params) if together else {}
        for d in apart:
            aucs[d] = deep_kind(datasets[name], d, params, own[d] or {}, args.training or {})
        if len(members) >= 2:
            for how in args.combinations:
                aucs[f"ensemble {how}"] = ensemble(datasets[name], params, members, how)
        runs.append({"data": name, "split": split, "roc_auc": aucs})
        best = max(aucs, key=aucs.__getitem__)
        each = " ".join(f"{d} {v:.4f}" for d, v in aucs.items())
        print(f"{name:13s} {split:10s} best {best} {aucs[best]:.4f}; {each}", flush=True)
    rows = summarise(runs, list(runs[0]["roc_auc"]))
    columns = ["detector", "mean_roc_auc", "mean_rank", "worst", "behind_best", *datasets]
    shown = [{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    print(table(shown, columns))
    by_name = {r["detector"]: r for r in rows}
    if "isolation_forest" in by_name:
        forest = by_name["isolation_forest"]["mean_roc_auc"]
        for deep in ("autoencoder", "vae"):
            if deep in by_name:
                mean = by_name[deep]["mean_roc_auc"]
                verdict = "meets" if mean >= forest else "MISSES"
                print(f"{deep} mean {mean:.4f} {verdict} isolation_forest's {forest:.4f}")
    singles = [r for r in rows if not r["detector"].startswith("ensemble")]
    best = max(singles, key=lambda r: r["mean_roc_auc"])
    for r in rows:
        if r["detector"].startswith("ensemble"):
            verdict = "meets" if r["mean_roc_auc"] >= best["mean_roc_auc"] else "MISSES"
            print(
                f"{r['detector']} mean {r['mean_roc_auc']:.4f} {verdict} the best single "
                f"({best['detector']}, {best['mean_roc_auc']:.4f}); more than {CLOSE} below the "
                f"best single on {r['behind_best']} of {len(runs)} splits"
            )
    report = {
        "quick": args.quick,
        "epochs": args.epochs,
        "ensemble_members": members,
        "autoencoder_params": args.autoencoder_params,
        "vae_params": args.vae_params,
        "training": args.training,
        "weights_seed_offset": args.weights_seed_offset,
        "seconds": time.perf_counter() - started,
        "splits": runs,
        "summary": rows,
    }
    print(f"wrote {write_report(args.report, report)}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
