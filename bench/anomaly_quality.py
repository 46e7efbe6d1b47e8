"""Anomaly-detection quality: every detector thermoml trains, on the same splits.

Each split is one `detector_comparison` job (run in-process): the classical detectors
(isolation forest, one-class SVM, local outlier factor, ECOD), `pca`, `autoencoder` and `vae`,
each trained as its own kind on the same normal rows, calibrated on the same held-out normal
rows and scored on the same labelled rows (ROC-AUC).

Splits: `breast_cancer` (malignant is the anomaly); `digits` with each digit in turn as the
normal class (the other nine are anomalies); `wine` with each cultivar in turn as the anomaly.
Each split is measured `--seeds` times (default 5, the seeds 0-4): the seed draws its
training, held-out and evaluation rows and the detectors' own randomness, and a split's
ROC-AUC is the mean over its seeds. Reported per detector: the mean ROC-AUC over all splits and
per data set, the mean rank (1 = best on a split, ties averaged), the worst split, the splits on
which it is more than 0.01 below the best single detector, and for an ensemble, how many of
those are beyond noise (a paired bootstrap of the evaluation rows of each seed) and how many
single seeds' runs are more than 0.01 below that run's best single detector.

    python bench/anomaly_quality.py [--quick] [--seeds 5] [--epochs 30] [--detectors a b ...]
        [--ensemble a b ...] [--combinations zscore-mean rank-max ...]
        [--autoencoder-params JSON] [--vae-params JSON] [--training JSON]
        [--weights-seed-offset N]

`--autoencoder-params`, `--vae-params` and `--training` try settings other than the kinds'
defaults: the `autoencoder` / `vae` detectors then run as their own kinds (not inside the
comparison, whose members take their kind's defaults) with those params and `training` fields
added to the comparison's epochs, seed and validation split, on the same splits.
`--weights-seed-offset N` draws the deep detectors' initial weights from the split's seed + N
(the kinds' `training.seed` sets the split, the batches' order and the initial weights alike).

Also measured: `ensemble` jobs of `--ensemble` members (default: the detectors measured), for
each `--combinations` entry (default: the z-scores averaged, over all members and over the
members chosen on the split's labelled rows outside its evaluation rows), on the same splits.
`--quick` (for `bench/run_all.py --quick`): the classical detectors, `pca` and their ensembles
on one split of each data set with one seed, in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy.stats import rankdata

from bench.common import table, write_report
from ml.anomaly.comparison import (
    CLASSICAL,
    ComparisonSpec,
    MemberReporter,
    model_meta,
    train_member,
)
from ml.anomaly.selection import roc_aucs
from ml.core.datasets import Dataset, load_builtin
from ml.core.registry import get_kind
from ml.core.reporting import MemoryReporter, RunContext
from ml.core.serving import scores_of
from ml.core.spec import JobSpec
from ml.reduction import shared as reduction
from ml.reduction.pca import split

ALL = [*CLASSICAL, "pca", "autoencoder", "vae"]
QUICK = [*CLASSICAL, "pca"]
CLOSE = 0.01  # "never more than 0.01 below the best single method"
BOOTSTRAP = 1000  # resamples of the held-out rows for a gap's standard error
BEYOND = 1.645  # a gap beyond CLOSE by this many standard errors: one-sided 5%


def splits(quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(data set, split name, params) of every split."""
    digits = [0] if quick else list(range(10))
    cultivars = [0] if quick else [0, 1, 2]
    return [
        ("breast_cancer", "malignant", {"anomaly_label": 1}),
        *[("digits", f"normal {d}", {"normal_label": d}) for d in digits],
        *[("wine", f"anomaly {c}", {"anomaly_label": c}) for c in cultivars],
    ]


class Split:
    """One split's held-out labelled rows and every detector's scores on them (the rows the
    kinds evaluate on: the same seed, validation and evaluation splits)."""

    def __init__(self, data: Dataset, params: dict[str, Any]) -> None:
        self.data, self.params = data, params
        self.spec = ComparisonSpec.model_validate(
            {"kind": "detector_comparison", "dataset": f"builtin:{data.name}", "params": params}
        )
        rows = reduction.load_rows(RunContext(Path("."), Path("."), data), "bench")
        parts = split(rows, self.spec.params)
        assert parts.truth is not None
        self.rows, self.truth = rows.raw[parts.evaluation], parts.truth
        self.scores: dict[str, np.ndarray] = {}
        self.selection: dict[str, Any] = {}

    def context(self, tmp: Path) -> RunContext:
        context = RunContext(tmp / "w", tmp / "c", self.data)
        context.workdir.mkdir(exist_ok=True)
        context.checkpoint_dir.mkdir(exist_ok=True)
        return context

    def train(self, name: str, member: JobSpec) -> None:
        """Train `member` as the `detector_comparison` kind trains it; score the held-out rows."""
        with tempfile.TemporaryDirectory() as tmp:
            context = self.context(Path(tmp))
            reporter = MemberReporter(MemoryReporter(), 0, 1, name)
            trained = train_member(member, reporter, context.workdir / "member", context)
            self.scores[name] = trained.score(self.rows)

    def compare(self, detectors: list[str]) -> None:
        """Each detector of a `detector_comparison` with the split's params."""
        for name, member in self.spec.members().items():
            if name in detectors:
                self.train(name, member)

    def deep_kind(self, kind_name: str, own: dict[str, Any], training: dict) -> None:
        """The `autoencoder` or `vae` kind with its `own` params and `training` fields."""
        shared = {k: v for k, v in self.params.items() if k not in ("detectors", "epochs", "seed")}
        body = {
            "kind": kind_name,
            "dataset": f"builtin:{self.data.name}",
            "params": {**own, **shared},
            "training": {
                "epochs": self.params["epochs"],
                "seed": self.params.get("seed", 0),
                "validation_split": 0.1,
                **training,
            },
        }
        self.train(kind_name, get_kind(kind_name).spec.model_validate(body))

    def ensemble(self, members: Sequence[str], how: str) -> None:
        """An `ensemble` job of `members` (`how`: standardise-combine[-selection], the
        selection `none` unless named), served on the held-out rows."""
        kind = get_kind("ensemble")
        standardise, combine, selection = [*how.split("-"), "none"][:3]
        body = {
            **{k: v for k, v in self.params.items() if k != "detectors"},
            "members": [{"detector": m} for m in members],
            "standardise": standardise,
            "combine": combine,
            "selection": selection,
        }
        spec = kind.spec.model_validate(
            {"kind": kind.name, "dataset": f"builtin:{self.data.name}", "params": body}
        )
        name = f"ensemble {how}"
        with tempfile.TemporaryDirectory() as tmp:
            outcome = kind.run(spec, MemoryReporter(), self.context(Path(tmp)))
            assert outcome.model is not None and kind.load is not None
            served = kind.load(outcome.model.files, model_meta(outcome.model))
            self.scores[name] = scores_of(served, self.rows)
        self.selection[name] = outcome.result["selection"]

    def aucs(self) -> dict[str, float]:
        names = list(self.scores)
        columns = np.stack([self.scores[n] for n in names], axis=1)
        values = roc_aucs(columns[~self.truth], columns[self.truth])
        return {n: float(v) for n, v in zip(names, values, strict=True)}

    def bootstrap(self, repeats: int = BOOTSTRAP) -> np.ndarray:
        """Every detector's ROC-AUC (columns in `aucs()` order) on `repeats` resamples of the
        held-out rows, each class resampled: paired draws, for the standard error of a gap."""
        columns = np.stack(list(self.scores.values()), axis=1)
        normal, anomalous = columns[~self.truth], columns[self.truth]
        rng = np.random.default_rng(0)
        draws = []
        for _ in range(repeats):
            n = normal[rng.integers(0, len(normal), len(normal))]
            a = anomalous[rng.integers(0, len(anomalous), len(anomalous))]
            draws.append(roc_aucs(n, a))
        return np.asarray(draws)


def gaps(aucs: dict[str, float], draws: np.ndarray) -> dict[str, dict[str, Any]]:
    """How far each ensemble is below the best single detector, with the standard error of that
    difference from the paired bootstrap `draws` (a column per detector, in `aucs` order)."""
    names = list(aucs)
    singles = [n for n in names if not n.startswith("ensemble")]
    best = max(singles, key=aucs.__getitem__)
    out = {}
    for name in (n for n in names if n.startswith("ensemble")):
        differences = draws[:, names.index(best)] - draws[:, names.index(name)]
        gap, se = aucs[best] - aucs[name], float(np.std(differences, ddof=1))
        out[name] = {"best": best, "gap": gap, "se": se}
    return out


def pool(runs: list[dict[str, Any]], draws: list[np.ndarray]) -> list[dict[str, Any]]:
    """Each split's record over its seeds: the mean ROC-AUC of each detector, and the gaps of
    the means with the bootstrap draws averaged over the seeds (independent resamples)."""
    pooled: dict[tuple[str, str], list[int]] = {}
    for i, run in enumerate(runs):
        pooled.setdefault((run["data"], run["split"]), []).append(i)
    records = []
    for (data, part), members in pooled.items():
        names = list(runs[members[0]]["roc_auc"])
        aucs = {n: statistics.mean(runs[i]["roc_auc"][n] for i in members) for n in names}
        mean_draws = np.mean([draws[i] for i in members], axis=0)
        seeds = [runs[i]["seed"] for i in members]
        record = {"data": data, "split": part, "seeds": seeds, "roc_auc": aucs}
        records.append({**record, "gaps": gaps(aucs, mean_draws)})
    return records


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


def best_single(run: dict[str, Any]) -> float:
    return max(v for k, v in run["roc_auc"].items() if not k.startswith("ensemble"))


def summarise(
    pooled: list[dict[str, Any]], runs: list[dict[str, Any]], detectors: list[str]
) -> list[dict[str, Any]]:
    """Per detector: mean ROC-AUC (all `pooled` splits, per data set), mean rank, worst split,
    and the splits more than CLOSE below that split's best single detector (not an ensemble);
    for an ensemble, also the single seeds' `runs` more than CLOSE below theirs."""
    ranks = [
        dict(zip(detectors, rankdata([-r["roc_auc"][d] for d in detectors]), strict=True))
        for r in pooled
    ]
    rows = []
    for d in detectors:
        aucs = [r["roc_auc"][d] for r in pooled]
        behind = [r for r in pooled if best_single(r) - r["roc_auc"][d] > CLOSE]
        row = {
            "detector": d,
            "mean_roc_auc": statistics.mean(aucs),
            "mean_rank": statistics.mean(float(rank[d]) for rank in ranks),
            "worst": min(aucs),
            "behind_best": len(behind),
        }
        if d.startswith("ensemble"):  # of those, behind by more than CLOSE beyond its noise
            row["beyond_noise"] = sum(
                (r["gaps"][d]["gap"] - CLOSE) / max(r["gaps"][d]["se"], 1e-12) > BEYOND
                for r in behind
            )
            row["seeds_behind"] = sum(best_single(r) - r["roc_auc"][d] > CLOSE for r in runs)
        for name in dict.fromkeys(r["data"] for r in pooled):
            row[name] = statistics.mean(r["roc_auc"][d] for r in pooled if r["data"] == name)
        rows.append(row)
    return sorted(rows, key=lambda row: (row["mean_rank"], -row["mean_roc_auc"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds 0..N-1 of each split (default 5; quick 1)"
    )
    parser.add_argument("--epochs", type=int, default=30, help="autoencoder and vae")
    parser.add_argument("--detectors", nargs="*", default=None)
    parser.add_argument(
        "--ensemble",
        nargs="*",
        default=None,
        help="members of the ensembles measured (default: the detectors measured)",
    )
    parser.add_argument(
        "--combinations",
        nargs="*",
        default=["zscore-mean", "zscore-mean-labelled"],
        help="the ensembles' standardise-combine[-selection]: (zscore|rank)-(mean|max), "
        "optionally -labelled (members chosen on the labelled rows outside the evaluation "
        "rows) or -none (all members, the default)",
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
    members = detectors if args.ensemble is None else args.ensemble
    if args.weights_seed_offset:
        reseed_weights(args.weights_seed_offset)
    datasets = {name: load_builtin(name) for name in ("breast_cancer", "digits", "wine")}
    runs: list[dict[str, Any]] = []
    draws: list[np.ndarray] = []
    seeds = args.seeds or (1 if args.quick else 5)
    started = time.perf_counter()
    for name, part, params in splits(args.quick):
        for seed in range(seeds):
            run_params = {**params, "seed": seed, "detectors": together, "epochs": args.epochs}
            held = Split(datasets[name], run_params)
            held.compare(together)
            for d in apart:
                held.deep_kind(d, own[d] or {}, args.training or {})
            if len(members) >= 2:
                for how in args.combinations:
                    held.ensemble(members, how)
            aucs = held.aucs()
            draws.append(held.bootstrap())
            run = {"data": name, "split": part, "seed": seed, "roc_auc": aucs}
            runs.append({**run, "gaps": gaps(aucs, draws[-1]), "selection": held.selection})
            best = max(aucs, key=aucs.__getitem__)
            each = " ".join(f"{d} {v:.4f}" for d, v in aucs.items())
            print(
                f"{name:13s} {part:10s} seed {seed} best {best} {aucs[best]:.4f}; {each}",
                flush=True,
            )
    pooled = pool(runs, draws)
    rows = summarise(pooled, runs, list(runs[0]["roc_auc"]))
    columns = ["detector", "mean_roc_auc", "mean_rank", "worst", "behind_best", "beyond_noise"]
    columns += ["seeds_behind", *datasets]
    shown = [{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    print(f"{len(pooled)} splits, each the mean of {seeds} seeds:")
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
    leader = max(singles, key=lambda r: r["mean_roc_auc"])
    for r in rows:
        if r["detector"].startswith("ensemble"):
            verdict = "meets" if r["mean_roc_auc"] >= leader["mean_roc_auc"] else "MISSES"
            print(
                f"{r['detector']} mean {r['mean_roc_auc']:.4f} {verdict} the best single "
                f"({leader['detector']}, {leader['mean_roc_auc']:.4f}); more than {CLOSE} below "
                f"the best single on {r['behind_best']} of {len(pooled)} splits, by more than "
                f"{BEYOND} standard errors beyond {CLOSE} on {r['beyond_noise']}; on "
                f"{r['seeds_behind']} of {len(runs)} single seeds' runs"
            )
    for level, records in (("split", pooled), ("run", runs)):
        for record in records:
            where = f"{record['data']} {record['split']}"
            if level == "run":
                where += f" seed {record['seed']}"
            for name, gap in record["gaps"].items():
                if gap["gap"] > CLOSE:
                    print(
                        f"  {level}: {name} on {where}: {gap['gap']:.4f} below {gap['best']} "
                        f"(paired bootstrap standard error {gap['se']:.4f})"
                    )
    report = {
        "quick": args.quick,
        "epochs": args.epochs,
        "ensemble_members": members,
        "autoencoder_params": args.autoencoder_params,
        "vae_params": args.vae_params,
        "training": args.training,
        "weights_seed_offset": args.weights_seed_offset,
        "seeds": seeds,
        "seconds": time.perf_counter() - started,
        "splits": pooled,
        "runs": runs,
        "summary": rows,
    }
    print(f"wrote {write_report(args.report, report)}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
