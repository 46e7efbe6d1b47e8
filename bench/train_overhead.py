"""Training throughput: plain `model.fit` against thermoml's loop with default telemetry.

The same autoencoder (dense, `digits` rows flattened to 64 features, min-max scaled) is trained
both ways, alternating, in one process; each timing excludes the first (compiling) epoch.

    python bench/train_overhead.py [--epochs 10] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np

from bench.common import table, write_report
from ml.autoencoding import AutoencoderObjective
from ml.datasets import load_builtin
from ml.kinds.autoencoder import AutoencoderParams
from ml.reporting import MemoryReporter
from ml.training import Trainer
from ml.training_config import TelemetryConfig, TrainingConfig

BATCH = 64


def data() -> np.ndarray:
    x = load_builtin("digits").x.reshape(1797, -1).astype(np.float32)
    return (x / 16.0).astype(np.float32)


def fit_plain(x: np.ndarray, params: AutoencoderParams, epochs: int) -> float:
    objective = AutoencoderObjective(params, (x.shape[1],))
    models = objective.models()
    model = keras.Sequential([models["encoder"], models["decoder"]])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(x, x, batch_size=BATCH, epochs=1, verbose=0, shuffle=True)  # compile
    start = time.perf_counter()
    model.fit(x, x, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=True)
    return len(x) * epochs / (time.perf_counter() - start)


def fit_thermoml(x: np.ndarray, params: AutoencoderParams, epochs: int, telemetry: bool) -> float:
    # Warm up past the first telemetry step too: tracing the measuring step is a one-off cost.
    warm = math.ceil(TelemetryConfig().every_steps / math.ceil(len(x) / BATCH)) + 1
    config = TrainingConfig.model_validate(
        {
            "epochs": epochs + warm,
            "batch_size": BATCH,
            "validation_split": 0.0,
            "telemetry": {} if telemetry else {"every_steps": 10**9},
        }
    )
    objective = AutoencoderObjective(params, (x.shape[1],))
    trainer = Trainer(objective, config, MemoryReporter())
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(epoch: int, step: int) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    trainer.fit(x, None, on_epoch_end=tick)
    return len(x) * epochs / sum(times[warm:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    epochs, repeats = (2, 1) if args.quick else (args.epochs, args.repeats)
    x = data()
    params = AutoencoderParams(latent_dim=8, hidden=[64, 32])
    runs: dict[str, list[float]] = {"model.fit": [], "thermoml": [], "thermoml (no telemetry)": []}
    for _ in range(repeats):
        runs["model.fit"].append(fit_plain(x, params, epochs))
        runs["thermoml"].append(fit_thermoml(x, params, epochs, telemetry=True))
        runs["thermoml (no telemetry)"].append(fit_thermoml(x, params, epochs, telemetry=False))
    base = statistics.median(runs["model.fit"])
    rows = [
        {
            "loop": name,
            "median_samples_per_s": statistics.median(v),
            "ratio_to_fit": statistics.median(v) / base,
            "runs": len(v),
        }
        for name, v in runs.items()
    ]
    print(table(rows, ["loop", "median_samples_per_s", "ratio_to_fit", "runs"]))
    ratio = rows[1]["ratio_to_fit"]
    print(f"thermoml with default telemetry runs at {ratio:.2f} of model.fit (target >= 0.90)")
    report = {"epochs": epochs, "batch_size": BATCH, "runs": runs, "rows": rows}
    print(f"wrote {write_report('train_overhead', report)}")


if __name__ == "__main__":
    main()
