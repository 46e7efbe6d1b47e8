"""The `thermostat` schedule against a constant rate where a constant rate stalls.

Linear regression (ℓ_i = ½(x_i·w + b − y_i)², 4 features, 224 training rows, noise sd 0.5),
plain SGD at η = 0.2, batch 16, measured every 3 steps, 30 epochs (420 steps): at a constant
rate the loss stalls at the stationary excess d·T/2 above the least-squares minimum. The
`thermostat` (factor 0.3) lowers the rate each time `equilibrium` holds. Same steps, same data,
same seed for both; repeated over seeds (the data set and the training seed change together).
Reported: the final excess training loss L − L* (L* from the normal equations) of each, their
means with standard errors over seeds, the paired difference, and the number of rate reductions.

    python bench/thermostat.py [--seeds 10] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import tensorflow as tf

from bench.common import table, write_report
from ml.core.reporting import MemoryReporter
from ml.core.training import Trainer
from ml.core.training_config import TrainingConfig

D, N_TRAIN, BATCH = 4, 224, 16


class LinearObjective:
    def __init__(self) -> None:
        self.w = tf.Variable(tf.zeros([D]))
        self.b = tf.Variable(0.0)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return [self.w, self.b]

    def per_example_loss(self, x: tf.Tensor, seed: tf.Tensor, training: bool):
        residual = tf.linalg.matvec(x[:, :D], self.w) + self.b - x[:, D]
        return 0.5 * tf.square(residual), {}


def data(seed: int) -> tuple[np.ndarray, float]:
    """Training rows (features then target) and the least-squares minimum of their loss."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_TRAIN, D))
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.3 + 0.5 * rng.normal(size=N_TRAIN)
    design = np.concatenate([x, np.ones((N_TRAIN, 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    best = float(np.mean(0.5 * (design @ coef - y) ** 2))
    return np.concatenate([x, y[:, None]], axis=1).astype(np.float32), best


def train(seed: int, schedule: str, epochs: int) -> tuple[float, int]:
    rows, best = data(seed)
    config = TrainingConfig.model_validate(
        {
            "epochs": epochs,
            "batch_size": BATCH,
            "seed": seed,
            "validation_split": 0.0,
            "optimizer": {"name": "sgd", "learning_rate": 0.2},
            "schedule": {"name": schedule, "factor": 0.3},
            "telemetry": {"every_steps": 3},
        }
    )
    reporter = MemoryReporter()
    result = Trainer(LinearObjective(), config, reporter).fit(rows)
    rates = reporter.series("lr")[1]
    reductions = sum(1 for a, b in itertools.pairwise(rates) if b < a)
    return result.final_loss - best, reductions


def mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.fmean(values), se


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seeds, epochs = (2, 10) if args.quick else (args.seeds, args.epochs)
    rows = []
    for seed in range(seeds):
        constant, _ = train(seed, "constant", epochs)
        thermostat, reductions = train(seed, "thermostat", epochs)
        rows.append(
            {
                "seed": seed,
                "excess_constant": constant,
                "excess_thermostat": thermostat,
                "reductions": reductions,
            }
        )
        print(f"seed {seed}: excess loss constant {constant:.2e}, thermostat {thermostat:.2e}")
    shown = [
        {**r, **{k: f"{r[k]:.3e}" for k in ("excess_constant", "excess_thermostat")}} for r in rows
    ]
    print(table(shown, list(rows[0])))
    summary = {}
    for key in ("excess_constant", "excess_thermostat"):
        summary[key] = mean_se([r[key] for r in rows])
    diff = mean_se([r["excess_constant"] - r["excess_thermostat"] for r in rows])
    lower = sum(r["excess_thermostat"] < r["excess_constant"] for r in rows)
    print(
        f"over {seeds} seeds, {epochs * N_TRAIN // BATCH} steps: excess loss constant "
        f"{summary['excess_constant'][0]:.2e} ± {summary['excess_constant'][1]:.1e}, thermostat "
        f"{summary['excess_thermostat'][0]:.2e} ± {summary['excess_thermostat'][1]:.1e}; "
        f"paired difference {diff[0]:.2e} ± {diff[1]:.1e}; thermostat lower at {lower}/{seeds}"
    )
    report = {
        "seeds": seeds,
        "epochs": epochs,
        "steps": epochs * N_TRAIN // BATCH,
        "rows": rows,
        "mean_se": summary,
        "paired_difference": diff,
        "thermostat_lower": lower,
    }
    print(f"wrote {write_report('thermostat', report)}")


if __name__ == "__main__":
    main()
