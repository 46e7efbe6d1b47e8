"""Sample quality of thermoml's `gan` and `diffusion` kinds under one training time budget.

On `swiss_roll` (2-D) and `digits` (8x8 images), each kind is trained with its DEFAULT parameters
for about `--budget` seconds of training (epochs set from a short probe run's seconds per epoch),
over several seeds; its sample quality against held-out real rows is printed beside the floor
(a second held-out real sample against the first). Then the swiss_roll diffusion model of the
first seed samples with DDPM and DDIM at 1000, 100 and 20 steps: time and quality.

    python bench/generative_quality.py [--budget 150] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import math
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

from bench.common import table, write_report
from ml.core.datasets import Dataset, load_builtin
from ml.core.registry import get_kind
from ml.core.reporting import MemoryReporter, RunContext, RunOutcome
from ml.generative import sample_quality as sq
from ml.generative import shared as generative

KINDS = ("gan", "diffusion")
METRICS = {
    "swiss_roll": ("energy_distance", "mmd"),
    "digits": ("frechet_distance", "classifier_confidence", "energy_distance"),
}
SAMPLING = [
    ("ddpm", 1000),
    ("ddim", 1000),
    ("ddpm", 100),
    ("ddim", 100),
    ("ddpm", 20),
    ("ddim", 20),
]


class TimingReporter(MemoryReporter):
    """Also notes when each epoch ended (every kind reports progress once an epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[float] = []

    def progress(self, fraction: float, **info: Any) -> None:
        super().progress(fraction, **info)
        self.ticks.append(time.perf_counter())


def train(
    kind: str, data: Dataset, training: dict[str, Any], folder: Path
) -> tuple[RunOutcome, TimingReporter]:
    k = get_kind(kind)
    spec = k.spec.model_validate(
        {"kind": kind, "dataset": f"builtin:{data.name}", "training": training}
    )
    ctx = RunContext(folder / "work", folder / "ckpt", data)
    ctx.workdir.mkdir(parents=True)
    ctx.checkpoint_dir.mkdir(parents=True)
    reporter = TimingReporter()
    return k.run(spec, reporter, ctx), reporter


def epochs_for(kind: str, data: Dataset, budget: float, probe_epochs: int = 6) -> int:
    """Epochs that fill `budget` seconds of training: the median epoch of a probe run, which
    leaves out the epochs that compile (the first, and the one with the first telemetry step)."""
    with tempfile.TemporaryDirectory() as tmp:
        _, reporter = train(kind, data, {"epochs": probe_epochs, "seed": 0}, Path(tmp))
    per_epoch = statistics.median(np.diff(reporter.ticks).tolist())
    return max(1, math.floor(budget / per_epoch))


def servable(kind: str, outcome: RunOutcome) -> Any:
    model = outcome.model
    assert model is not None
    meta = {
        "input_shape": model.input_shape,
        "preprocessing": model.preprocessing,
        "calibration": model.calibration,
        "capabilities": model.capabilities,
    }
    return get_kind(kind).load(model.files, meta)  # type: ignore[misc]


def sampler_comparison(
    outcome: RunOutcome, data: Dataset, seed: int, plan: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    """DDPM vs DDIM at several step counts, on the model's own held-out halves."""
    model = servable("diffusion", outcome)
    spec = get_kind("diffusion").spec.model_validate(
        {"kind": "diffusion", "dataset": "x", "training": {"seed": seed}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        prepared = generative.prepare(spec, RunContext(Path(tmp), Path(tmp), data), 0.2)
    a, b, train_rows = prepared.held_out_a, prepared.held_out_b, prepared.train_raw
    floor = sq.evaluate(b, a, b, train_rows)["energy_distance"]
    rows = []
    for sampler, steps in plan:
        started = time.perf_counter()
        samples = model.run("generate", None, n=len(b), seed=1, sampler=sampler, steps=steps)
        seconds = time.perf_counter() - started
        quality = sq.evaluate(samples["samples"], a, b, train_rows)
        rows.append(
            {
                "sampler": sampler,
                "steps": steps,
                "n": len(b),
                "seconds": f"{seconds:.2f}",
                "energy_distance": f"{quality['energy_distance']:.5f}",
                "floor": f"{floor:.5f}",
                "ratio": f"{quality['energy_distance'] / floor:.2f}",
                "mmd": f"{quality['mmd']:.4f}",
            }
        )
    return rows


def subsample(data: Dataset, rows: int) -> Dataset:
    keep = np.random.default_rng(0).permutation(len(data.x))[:rows]
    return Dataset(
        x=data.x[keep],
        y=None if data.y is None else data.y[keep],
        name=data.name,
        label_type=data.label_type,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds per model")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default="swiss_roll,digits")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny data, 1 epoch")
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    report: dict[str, Any] = {"budget_seconds": args.budget, "seeds": seeds, "quick": args.quick}
    rows: list[dict[str, Any]] = []
    keep = tempfile.TemporaryDirectory()
    first_diffusion: dict[str, RunOutcome] = {}
    for name in args.datasets.split(","):
        data = data_for(name, args.quick)
        for kind in KINDS:
            epochs = 1 if args.quick else epochs_for(kind, data, args.budget)
            runs = []
            for seed in range(seeds):
                folder = Path(keep.name) / f"{name}-{kind}-{seed}"
                outcome, _ = train(kind, data, {"epochs": epochs, "seed": seed}, folder)
                assert outcome.model is not None
                evaluation = {
                    k: v
                    for k, v in outcome.model.evaluation.items()
                    if k != "entropy_production_per_step"
                }
                runs.append({**evaluation, "train_seconds": outcome.result["train_seconds"]})
                if kind == "diffusion" and seed == 0:
                    first_diffusion[name] = outcome
            report.setdefault(name, {})[kind] = {"epochs": epochs, "runs": runs}
            for metric in METRICS[name]:
                values = [r[metric] for r in runs]
                floors = [r[f"{metric}_floor"] for r in runs]
                ratios = [v / f if f else math.nan for v, f in zip(values, floors, strict=True)]
                rows.append(
                    {
                        "data": name,
                        "kind": kind,
                        "metric": metric,
                        "model": f"{statistics.mean(values):.4g}",
                        "floor": f"{statistics.mean(floors):.4g}",
                        "ratio": f"{statistics.mean(ratios):.2f}",
                        "ratio_range": f"{min(ratios):.2f}-{max(ratios):.2f}",
                        "seeds": len(runs),
                        "epochs": epochs,
                        "train_s": f"{statistics.mean(r['train_seconds'] for r in runs):.0f}",
                    }
                )
    columns = ["data", "kind", "metric", "model", "floor", "ratio", "ratio_range", "seeds"]
    print(table(rows, [*columns, "epochs", "train_s"]))
    report["table"] = rows
    if "swiss_roll" in first_diffusion:
        data = data_for("swiss_roll", args.quick)
        sampling = sampler_comparison(first_diffusion["swiss_roll"], data, 0, SAMPLING)
        print()
        columns = ["sampler", "steps", "n", "seconds", "energy_distance", "floor", "ratio", "mmd"]
        print(table(sampling, columns))
        report["sampling"] = sampling
        target = next(
            r
            for r in rows
            if (r["data"], r["kind"], r["metric"]) == ("swiss_roll", "diffusion", "energy_distance")
        )
        verdict = "meets" if float(target["ratio"]) <= 3 else "MISSES"
        print(
            f"\nswiss_roll diffusion: energy distance {target['ratio']} x the held-out floor "
            f"(seeds {target['ratio_range']}); {verdict} the target of 3x"
        )
    keep.cleanup()
    print(f"wrote {write_report('generative_quality', report)}")


def data_for(name: str, quick: bool) -> Dataset:
    data = load_builtin(name)
    return subsample(data, 600) if quick else data


if __name__ == "__main__":
    main()
