"""Anomaly-detection quality: thermoml's autoencoder and VAE against IsolationForest and
OneClassSVM, on the same splits, over several seeds.

`breast_cancer`: train on benign rows, malignant is the anomaly. `digits`: one digit is the
anomaly, the other nine are normal. Every method gets the same normal training rows and the
same labelled evaluation rows (thermoml's own split, reproducible from the seed); the
baselines see the rows standardised with the statistics of the training rows.

    python bench/anomaly_quality.py [--seeds 5] [--digit 0] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.svm import OneClassSVM

from bench.common import table, write_report
from ml.anomaly.scoring import prepare
from ml.core.datasets import Dataset, load_builtin
from ml.core.registry import get_kind
from ml.core.reporting import MemoryReporter, RunContext


def thermoml_auc(kind: str, spec: dict[str, Any], data: Dataset) -> float:
    k = get_kind(kind)
    parsed = k.spec.model_validate(spec)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(Path(tmp) / "w", Path(tmp) / "c", data)
        ctx.workdir.mkdir()
        ctx.checkpoint_dir.mkdir()
        outcome = k.run(parsed, MemoryReporter(), ctx)
    assert outcome.model is not None
    return float(outcome.model.evaluation["roc_auc"])


def baseline_aucs(spec: dict[str, Any], data: Dataset, seed: int) -> dict[str, float]:
    kind = get_kind("autoencoder")
    parsed = kind.spec.model_validate({**spec, "kind": "autoencoder"})
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(parsed, RunContext(Path(tmp), Path(tmp), data))
    train = np.concatenate([prepared.train, prepared.validation]).reshape(
        len(prepared.train) + len(prepared.validation), -1
    )
    evaluation = prepared.evaluation.reshape(len(prepared.evaluation), -1)
    truth = prepared.evaluation_truth
    assert truth is not None
    forest = IsolationForest(random_state=seed).fit(train)
    svm = OneClassSVM(gamma="scale", nu=0.05).fit(train)
    return {
        "IsolationForest": float(roc_auc_score(truth, -forest.score_samples(evaluation))),
        "OneClassSVM": float(roc_auc_score(truth, -svm.score_samples(evaluation))),
    }


def cases(digit: int) -> list[tuple[str, Dataset, dict[str, Any]]]:
    cancer = load_builtin("breast_cancer")
    digits = load_builtin("digits")
    return [
        ("breast_cancer", cancer, {"params": {"anomaly_label": 1}}),
        (f"digits (anomaly: {digit})", digits, {"params": {"anomaly_label": digit}}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--digit", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    for name, data, extra in cases(args.digit):
        scores: dict[str, list[float]] = {}
        for seed in range(seeds):
            training: dict[str, Any] = {"seed": seed}
            if args.quick:
                training["epochs"] = 2
            spec = {"dataset": f"builtin:{data.name}", **extra, "training": training}
            for kind in ("autoencoder", "vae"):
                auc = thermoml_auc(kind, {**spec, "kind": kind}, data)
                scores.setdefault(f"thermoml {kind}", []).append(auc)
            for method, auc in baseline_aucs(spec, data, seed).items():
                scores.setdefault(method, []).append(auc)
        report[name] = scores
        for method, values in scores.items():
            rows.append(
                {
                    "data": name,
                    "method": method,
                    "mean_roc_auc": f"{statistics.mean(values):.4f}",
                    "min": f"{min(values):.4f}",
                    "max": f"{max(values):.4f}",
                    "seeds": len(values),
                }
            )
    print(table(rows, ["data", "method", "mean_roc_auc", "min", "max", "seeds"]))
    cancer = report["breast_cancer"]
    forest = statistics.mean(cancer["IsolationForest"])
    for kind in ("autoencoder", "vae"):
        mean = statistics.mean(cancer[f"thermoml {kind}"])
        verdict = "meets" if mean >= forest - 0.02 else "MISSES"
        print(
            f"breast_cancer: thermoml {kind} {mean:.4f} {verdict} IsolationForest - 0.02 "
            f"= {forest - 0.02:.4f}"
        )
    print(f"wrote {write_report('anomaly_quality', {'seeds': seeds, 'roc_auc': report})}")


if __name__ == "__main__":
    main()
