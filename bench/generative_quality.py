"""Sample quality of thermoml's `gan` objectives beside the `diffusion` kind.

Every GAN variant trains with the gan kind's default training section (or `--epochs`, the same
for all: the same passes over the data, the same discriminator batches) on `swiss_roll` (2-D),
`eight_gaussians` (an 8-Gaussian ring, 2-D) and `digits` (8x8 images), over several seeds; the
diffusion kind trains with its own defaults (`--learning-rate` sets every gan variant's Adam
rate). Printed: the energy distance to held-out real rows over its floor (below); a steadier
ratio, 4000 samples against both held-out halves over 4000 training rows against them; the
Fréchet distance over its floor for digits; and on the ring the modes covered (of 8) and the share
of samples within 3σ of a mode. Then the swiss_roll diffusion model of the
first seed samples with DDPM and DDIM at 1000, 100 and 20 steps.

The energy distance's floor is what a perfect generator would score against held-out half A.
The model's own evaluation records one draw of it (held-out half B against half A), which varies
by a factor of 2-4 between seeds; the bench's floor (`energy/floor`, and the targets) is instead
the mean over five disjoint training subsets of half B's size against the same half A: it shares
half A with the model's distance and averages out the second sample's noise. The ratio to the
evaluation's single draw is printed beside it (`energy/single floor`). The Fréchet distance's
floor is the evaluation's single draw (its feature classifier was trained on the training rows).

    python bench/generative_quality.py [--epochs N] [--learning-rate R] [--seeds 3]
        [--datasets ...] [--variants ...] [--quick]
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

# name: (kind, params); every gan variant gets the same training section
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "gan default": ("gan", {}),
    "non_saturating": ("gan", {"loss": "non_saturating", "r1": 0.0}),
    "wgan_gp": ("gan", {"loss": "wgan_gp", "r1": 0.0}),
    "hinge": ("gan", {"loss": "hinge", "r1": 0.0}),
    "seed preset": ("gan", {"preset": "seed"}),
    "diffusion": ("diffusion", {}),
}
DATASETS = ("swiss_roll", "eight_gaussians", "digits")
RING_RADIUS, RING_STD = 4.0 / math.sqrt(2.0), 0.5 / math.sqrt(2.0)  # ml.core.datasets' ring
LARGE_SAMPLE = 4000
SAMPLING = [("ddpm", 1000), ("ddim", 1000), ("ddpm", 100), ("ddim", 100), ("ddpm", 20)]


def train(
    kind: str, data: Dataset, params: dict[str, Any], training: dict[str, Any], folder: Path
) -> RunOutcome:
    k = get_kind(kind)
    raw = {"kind": kind, "dataset": f"builtin:{data.name}", "params": params}
    spec = k.spec.model_validate({**raw, "training": training})
    ctx = RunContext(folder / "work", folder / "ckpt", data)
    ctx.workdir.mkdir(parents=True)
    ctx.checkpoint_dir.mkdir(parents=True)
    return k.run(spec, MemoryReporter(), ctx)


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


def prepared(data: Dataset, seed: int) -> generative.GenerativeData:
    """The split and preprocessing a job with this seed sees."""
    spec = get_kind("gan").spec.model_validate(
        {"kind": "gan", "dataset": "x", "training": {"seed": seed}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        return generative.prepare(spec, RunContext(Path(tmp), Path(tmp), data), 0.2)


def floors(data: Dataset, seed: int, parts: int = 5) -> dict[str, float]:
    """The evaluation's energy-distance floor (held-out half B against half A: one draw, which
    varies by a factor of 2-4 between seeds) and a steadier one: the mean over `parts` disjoint
    random training subsets of half B's size against half A."""
    d = prepared(data, seed)
    a, b = d.held_out_a, d.held_out_b
    rows = d.train_raw[np.random.default_rng([seed, 9]).permutation(len(d.train_raw))]
    offset, scale = sq.standardizer(d.train_raw)

    def std(x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1) - offset) / scale

    n = len(b)
    subsets = [rows[i * n : (i + 1) * n] for i in range(min(parts, len(rows) // n))]
    mean = statistics.mean(sq.energy_distance(std(t), std(a)) for t in subsets)
    return {"energy": sq.energy_distance(std(b), std(a)), "energy_mean": mean}


def large_sample_ratio(kind: str, outcome: RunOutcome, data: Dataset, seed: int) -> float:
    """Energy distance of LARGE_SAMPLE samples (or as many as there are training rows) to both
    held-out halves, over that of as many training rows to the same rows: steadier than the
    evaluation's ratio (larger samples on both sides), on its own scale (a smaller floor)."""
    d = prepared(data, seed)
    held = np.concatenate([d.held_out_a, d.held_out_b])
    rows = d.train_raw[np.random.default_rng(5).permutation(len(d.train_raw))[:LARGE_SAMPLE]]
    model = servable(kind, outcome)
    samples = np.asarray(model.run("generate", None, n=len(rows), seed=seed + 100)["samples"])
    offset, scale = sq.standardizer(d.train_raw)

    def std(x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1) - offset) / scale

    return sq.energy_distance(std(samples), std(held)) / sq.energy_distance(std(rows), std(held))


def mode_coverage(samples: np.ndarray) -> tuple[int, float]:
    """Modes of the ring with at least a quarter of their fair share of samples within 3σ, and
    the share of all samples within 3σ of some mode."""
    angles = np.arange(8) * (np.pi / 4)
    centres = RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    distance = np.linalg.norm(samples[:, None, :] - centres[None], axis=2)
    nearest, close = distance.argmin(axis=1), distance.min(axis=1) < 3 * RING_STD
    counts = np.bincount(nearest[close], minlength=8)
    return int((counts >= len(samples) / 8 / 4).sum()), float(close.mean())


def run_one(
    variant: str, data: Dataset, seed: int, overrides: dict[str, Any], folder: Path
) -> tuple[dict[str, Any], RunOutcome]:
    kind, params = VARIANTS[variant]
    outcome = train(kind, data, params, {**overrides, "seed": seed}, folder)
    assert outcome.model is not None
    ev = outcome.model.evaluation
    steady = floors(data, seed)
    row = {
        "energy": ev["energy_distance"] / steady["energy_mean"],
        "energy_single": ev["energy_distance"] / ev["energy_distance_floor"],
        "seconds": outcome.result["train_seconds"],
        "epochs": outcome.result["epochs"],
        "energy_large": large_sample_ratio(kind, outcome, data, seed),
    }
    if "frechet_distance" in ev:
        row["frechet"] = ev["frechet_distance"] / ev["frechet_distance_floor"]
    if data.name.startswith("eight_gaussians"):
        samples = servable(kind, outcome).run("generate", None, n=2000, seed=seed)["samples"]
        row["modes"], row["in_modes"] = mode_coverage(np.asarray(samples))
    return row, outcome


def summarise(name: str, variant: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def spread(key: str) -> str:
        values = [r[key] for r in runs]
        return f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    row = {"data": name, "variant": variant, "seeds": len(runs), "energy/floor": spread("energy")}
    row["energy/single floor"] = spread("energy_single")
    row[f"energy/floor, {LARGE_SAMPLE} samples"] = spread("energy_large")
    row["frechet/floor"] = spread("frechet") if "frechet" in runs[0] else ""
    row["modes"] = f"{min(r['modes'] for r in runs)}/8" if "modes" in runs[0] else ""
    row["in_modes"] = spread("in_modes") if "in_modes" in runs[0] else ""
    row["epochs"] = f"{statistics.mean(r['epochs'] for r in runs):.0f}"
    row["train_s"] = f"{statistics.mean(r['seconds'] for r in runs):.0f}"
    return row


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
        ratio = quality["energy_distance"] / floor
        rows.append({"sampler": sampler, "steps": steps, "seconds": f"{seconds:.2f}"})
        rows[-1].update({"energy/floor": f"{ratio:.2f}", "mmd": f"{quality['mmd']:.4f}"})
    return rows


def verdicts(report: dict[str, Any]) -> list[str]:
    """The default GAN against its targets: the mean over the seeds ≤ 3x the floor on swiss_roll
    (energy distance over the bench's mean floor) and digits (Fréchet distance), all 8 modes of
    the ring covered in every seed. The worst seed is printed beside the mean."""
    out = []
    checks = [("swiss_roll", "energy", 3.0), ("digits", "frechet", 3.0)]
    for name, key, target in checks:
        runs = report.get(name, {}).get("gan default")
        if runs:
            mean = statistics.mean(r[key] for r in runs)
            worst = max(r[key] for r in runs)
            verdict = "meets" if mean <= target else "MISSES"
            out.append(
                f"{name}: default gan {key}/floor {mean:.2f} over the seeds "
                f"(worst {worst:.2f}): {verdict} {target}x"
            )
    runs = report.get("eight_gaussians", {}).get("gan default")
    if runs:
        fewest = min(r["modes"] for r in runs)
        verdict = "meets" if fewest == 8 else "MISSES"
        out.append(f"eight_gaussians: default gan covers at least {fewest}/8 modes: {verdict}")
    return out


def data_for(name: str, quick: bool) -> Dataset:
    data = load_builtin(name)
    if not quick:
        return data
    keep = np.random.default_rng(0).permutation(len(data.x))[:600]
    y = None if data.y is None else data.y[keep]
    return Dataset(x=data.x[keep], y=y, name=f"{name}", label_type=data.label_type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--epochs", type=int, default=None, help="every gan variant's epochs (default: the kind's)"
    )
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="every gan variant's Adam rate"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny data, 1 epoch")
    parser.add_argument("--report", default="generative_quality", help="bench/results/<name>.json")
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    variants = ["gan default", "diffusion"] if args.quick else args.variants.split(",")
    epochs = 1 if args.quick else args.epochs
    overrides: dict[str, Any] = {} if epochs is None else {"epochs": epochs}
    if args.learning_rate is not None:
        overrides["optimizer"] = {"learning_rate": args.learning_rate}
    report: dict[str, Any] = {"training": overrides, "seeds": seeds, "quick": args.quick}
    rows: list[dict[str, Any]] = []
    first_diffusion: RunOutcome | None = None
    with tempfile.TemporaryDirectory() as keep:
        for name in args.datasets.split(","):
            data = data_for(name, args.quick)
            for variant in variants:
                if args.quick and variant == "diffusion" and name != "swiss_roll":
                    continue  # the smoke run: diffusion once, for the sampler comparison
                runs = []
                for seed in range(seeds):
                    folder = Path(keep) / f"{name}-{variant}-{seed}".replace(" ", "_")
                    own = VARIANTS[variant][0] == "diffusion" and not args.quick
                    run, outcome = run_one(variant, data, seed, {} if own else overrides, folder)
                    runs.append(run)
                    if (name, variant, seed) == ("swiss_roll", "diffusion", 0):
                        first_diffusion = outcome
                report.setdefault(name, {})[variant] = runs
                rows.append(summarise(name, variant, runs))
                print(table(rows[-1:], list(rows[-1])), flush=True)
        print(table(rows, list(rows[0])))
        report["table"] = rows
        report["targets"] = verdicts(report)
        for line in report["targets"]:
            print(line)
        if first_diffusion is not None:
            plan = SAMPLING[-1:] if args.quick else SAMPLING
            data = data_for("swiss_roll", args.quick)
            sampling = sampler_comparison(first_diffusion, data, 0, plan)
            print(table(sampling, list(sampling[0])))
            report["sampling"] = sampling
    print(f"wrote {write_report(args.report, report)}")


if __name__ == "__main__":
    main()
