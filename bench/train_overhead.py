"""Training throughput: plain `model.fit` against thermoml's loop, for three objectives.

Three models, each trained three ways on the same network, rows, batch size and optimizer
(Adam, 1e-3): `model.fit`, thermoml's `Trainer` with default telemetry, and the `Trainer` with
telemetry switched off (`every_steps` beyond the run). The runs alternate (every repeat goes
through each model's three loops, in an order rotated per repeat) and the report gives medians
over the repeats, the ratio of medians to `model.fit` and the median of the per-repeat ratios.

- autoencoder: `digits` rows (64 features, min-max scaled), latent 8, hidden [64, 32], batch 64.
  Baseline: `keras.Sequential([encoder, decoder])` of the objective's own layers, compiled with
  `loss="mse"` (the objective's loss: the mean over features).
- vae: the same rows and sizes, the Gaussian likelihood (the kind's default), batch 64.
  Baseline: `ObjectiveModel`, a thin `keras.Model` whose `train_step` is keras-io's `vae.py`
  step: it takes the mean of the objective's own `per_example_loss` (the negative ELBO, with
  its stateless seed drawn from the optimizer's iteration count), applies the gradient and
  updates `keras.metrics.Mean` trackers of the loss and of each extra (distortion, rate).
- diffusion: what the `diffusion` kind trains on `builtin:swiss_roll` with its defaults: the
  kind's training rows (7000 of 10000, standardised), the residual MLP [256, 256, 256] with a
  64-wide time embedding, T = 1000 (linear), batch 128, EMA of the weights (decay 0.999).
  Baseline: the same `ObjectiveModel` over L_simple; its EMA is the one a `model.fit` user
  gets from Keras, `Adam(use_ema=True, ema_momentum=0.999)`. The thermoml side is the kind's
  `EmaTrainer`.

`model.fit` runs with Keras's defaults (`jit_compile="auto"`, which is off on a CPU-only
machine, and `steps_per_execution=1`); the report records both. Each timing leaves out the
compiling epoch(s): both are timed from the end of a warm-up epoch to the end of the last one
(each loop through an `on_epoch_end` callback), and the `Trainer`'s warm-up
runs past its first measuring step. The `Trainer`'s epochs include its end-of-epoch loss
evaluation (up to 2048 rows, no training-time randomness): that is part of its loop. Not
included: validation, checkpoints, the diffusion kind's per-epoch bound.

A second part measures what the default `telemetry.every_steps: "auto"` costs on a whole job of
`--overhead-steps` (1000) steps: the autoencoder and the VAE, each job run with the default
telemetry and without any, one after the other, timed epoch by epoch. The steady-state overhead
(target: within 10%) leaves out, in both jobs, the first epoch (compiling the plain step) and the
epoch of the first measuring point (compiling the measuring step, a one-off cost of a few seconds
that is reported on its own, with the overhead it makes on the whole job). On a busy machine two
whole jobs of a few seconds differ by more than their telemetry, so the figure held against the
target comes from per-step costs instead: the fastest epoch of a job measuring at every step
against that of one that never measures (3 epochs each; medians over the repeats) gives the
seconds of a measuring and of a plain step, and the job's measuring points times their
difference over its plain steps' time is the overhead.

    python bench/train_overhead.py [--epochs 10] [--repeats 3] [--only vae ...] [--quick]
        [--overhead-steps 1000]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np
import tensorflow as tf

from bench.common import table, write_report
from ml.anomaly.autoencoder import AutoencoderParams
from ml.anomaly.autoencoding import AutoencoderObjective, VaeObjective
from ml.anomaly.vae import VaeParams
from ml.core.datasets import load_builtin
from ml.core.reporting import MemoryReporter
from ml.core.splits import split_indices
from ml.core.training import Callback, Trainer
from ml.core.training_config import AUTO_MIN_INTERVAL, TrainingConfig, auto_interval
from ml.generative.diffusion import DiffusionParams, DiffusionTraining
from ml.generative.diffusion_model import DiffusionObjective, EmaTrainer, chain_of

LOOPS = ("model.fit", "thermoml", "thermoml (no telemetry)")
LEARNING_RATE = 1e-3  # the Trainer's default Adam rate


class ObjectiveModel(keras.Model):
    """`model.fit` on a thermoml objective, as keras-io's `vae.py` writes a custom step."""

    def __init__(self, objective: Any, extra_names: list[str]) -> None:
        super().__init__()
        self.objective = objective
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.extra_trackers = [keras.metrics.Mean(name=name) for name in extra_names]
        self.built = True  # the objective's layers are built; fit need not trace a `call`

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self.loss_tracker, *self.extra_trackers]

    def train_step(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        variables = self.objective.trainable_variables
        # 1. a fresh stateless seed per step, as the Trainer draws one
        seed = tf.stack([0, tf.cast(self.optimizer.iterations, tf.int32)])
        # 2. the objective's loss and its gradient
        with tf.GradientTape() as tape:
            per_example, extras = self.objective.per_example_loss(x, seed, True)
            loss = tf.reduce_mean(per_example)
        grads = tape.gradient(loss, variables)
        # 3. the update (and the optimizer's EMA, when it keeps one)
        self.optimizer.apply(grads, variables)
        # 4. the trackers
        self.loss_tracker.update_state(loss)
        for tracker in self.extra_trackers:
            tracker.update_state(tf.reduce_mean(extras[tracker.name]))
        return {m.name: m.result() for m in self.metrics}


def objective_model(objective: Any, x: np.ndarray, optimizer: keras.Optimizer) -> keras.Model:
    _, extras = objective.per_example_loss(tf.constant(x[:2]), tf.constant([0, 0]), False)
    model = ObjectiveModel(objective, sorted(extras))
    model.compile(optimizer=optimizer)
    model.optimizer.build(objective.trainable_variables)
    return model


@dataclass
class Case:
    name: str
    x: np.ndarray
    batch: int
    objective: Callable[[], Any]
    fit_model: Callable[[Any, np.ndarray], keras.Model]
    trainer: Callable[[Any, TrainingConfig], Trainer]
    description: str


def digits() -> np.ndarray:
    x = load_builtin("digits").x.reshape(1797, -1).astype(np.float32)
    return (x / 16.0).astype(np.float32)


def swiss_roll_train(training: TrainingConfig, evaluation_split: float) -> np.ndarray:
    """The rows the diffusion kind trains on: its training split, standardised."""
    x = load_builtin("swiss_roll").x.astype(np.float32)
    parts = split_indices(len(x), training.validation_split, evaluation_split, training.seed)
    train = x[parts.train]
    return ((train - train.mean(axis=0)) / train.std(axis=0)).astype(np.float32)


def cases() -> list[Case]:
    x_digits = digits()
    shape = (x_digits.shape[1],)
    ae = AutoencoderParams(latent_dim=8, hidden=[64, 32])
    vae = VaeParams(latent_dim=8, hidden=[64, 32])
    diffusion, diffusion_training = DiffusionParams(), DiffusionTraining()
    x_roll = swiss_roll_train(diffusion_training, diffusion.evaluation_split)
    chain = chain_of(diffusion)

    def ae_fit(objective: AutoencoderObjective, x: np.ndarray) -> keras.Model:
        models = objective.models()
        model = keras.Sequential([models["encoder"], models["decoder"]])
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="mse")
        return model

    def diffusion_trainer(objective: DiffusionObjective, config: TrainingConfig) -> Trainer:
        return EmaTrainer(
            objective,
            config,
            MemoryReporter(),
            decay=diffusion.ema_decay,
            extra_metrics=lambda extras: {"loss_simple": extras.get("loss_simple", math.nan)},
        )

    return [
        Case(
            "autoencoder",
            x_digits,
            TrainingConfig().batch_for(len(x_digits)),
            lambda: AutoencoderObjective(ae, shape),
            ae_fit,
            lambda objective, config: Trainer(objective, config, MemoryReporter()),
            "digits, dense 64-32-8, mse",
        ),
        Case(
            "vae",
            x_digits,
            TrainingConfig().batch_for(len(x_digits)),
            lambda: VaeObjective(vae, shape),
            lambda objective, x: objective_model(
                objective, x, keras.optimizers.Adam(LEARNING_RATE)
            ),
            lambda objective, config: Trainer(
                objective, config, MemoryReporter(), extra_metrics=objective.vae_metrics
            ),
            "digits, dense 64-32-8, Gaussian likelihood",
        ),
        Case(
            "diffusion",
            x_roll,
            diffusion_training.batch_size,
            lambda: DiffusionObjective(diffusion, (x_roll.shape[1],), chain),
            lambda objective, x: objective_model(
                objective,
                x,
                keras.optimizers.Adam(
                    LEARNING_RATE, use_ema=True, ema_momentum=diffusion.ema_decay
                ),
            ),
            diffusion_trainer,
            "swiss_roll, residual MLP 256x3, T=1000, EMA 0.999",
        ),
    ]


def fit_plain(case: Case, epochs: int) -> tuple[float, dict[str, Any]]:
    model = case.fit_model(case.objective(), case.x)
    y = case.x if isinstance(model, keras.Sequential) else None
    ends: list[float] = []
    stamp = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter())
    )
    # Timed as the Trainer is: from the end of the first (compiling) epoch to the end of the last.
    model.fit(case.x, y, batch_size=case.batch, epochs=epochs + 1, verbose=0, callbacks=[stamp])
    settings = {
        "jit_compile": bool(model.jit_compile),
        "steps_per_execution": int(model.steps_per_execution),
    }
    return len(case.x) * epochs / (ends[-1] - ends[0]), settings


class EpochClock(Callback):
    """The seconds of each epoch, end to end."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.last = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, epoch: int, step: int, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def fit_thermoml(case: Case, epochs: int, telemetry: bool) -> float:
    # Warm up past the first telemetry step too: tracing the measuring step is a one-off cost.
    per_epoch = len(case.x) // case.batch
    warm = math.ceil(auto_interval(per_epoch * (epochs + 2)) / per_epoch) + 1
    config = TrainingConfig.model_validate(
        {
            "epochs": epochs + warm,
            "batch_size": case.batch,
            "validation_split": 0.0,
            "telemetry": {} if telemetry else {"every_steps": 10**9},
        }
    )
    trainer = case.trainer(case.objective(), config)
    clock = EpochClock()
    trainer.fit(case.x, None, callbacks=[clock])
    return len(case.x) * epochs / sum(clock.times[warm:])


class MeasureCount(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_measure(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.steps.append(step)


@dataclass
class Job:
    epoch_seconds: list[float]
    steps: int
    per_epoch: int
    measured: list[int]  # the measuring steps
    interval: int


def timed_job(case: Case, steps: int, telemetry: bool) -> Job:
    """A whole job of at least `steps` steps with `every_steps: "auto"` (or no telemetry),
    timed epoch by epoch."""
    per_epoch = math.ceil(len(case.x) / case.batch)
    epochs = math.ceil(steps / per_epoch) + 1
    config = TrainingConfig.model_validate(
        {
            "epochs": epochs,
            "batch_size": case.batch,
            "validation_split": 0.0,
            "telemetry": {} if telemetry else {"every_steps": 10**9},
        }
    )
    trainer = case.trainer(case.objective(), config)
    clock, count = EpochClock(), MeasureCount()
    trainer.fit(case.x, None, callbacks=[clock, count])
    interval = trainer.measuring_interval(len(case.x))
    return Job(clock.times, per_epoch * epochs, per_epoch, count.steps, interval)


def measuring_cost(case: Case, epochs: int) -> tuple[float, float]:
    """Seconds of a plain step and of a measuring step: a job measuring at every step against
    one that never measures, each from its fastest epoch (the first, compiling, left out): the
    least disturbed by other load, as timeit takes the minimum."""
    per_step = []
    for every in (10**9, 1):
        config = TrainingConfig.model_validate(
            {
                "epochs": epochs + 1,
                "batch_size": case.batch,
                "validation_split": 0.0,
                "telemetry": {"every_steps": every},
            }
        )
        clock = EpochClock()
        case.trainer(case.objective(), config).fit(case.x, None, callbacks=[clock])
        per_step.append(min(clock.times[1:]) / math.ceil(len(case.x) / case.batch))
    return per_step[0], per_step[1]


def auto_overhead(chosen: list[Case], steps: int, repeats: int) -> list[dict[str, Any]]:
    """Measuring overhead of `every_steps: "auto"` on jobs of `steps` steps: the same job with
    and without telemetry, one after the other, medians over the repeats. The steady state leaves
    out the first epoch (the plain step's trace) and the epoch of the first measuring point (the
    measuring step's trace, a one-off cost reported on its own) in both jobs."""
    rows = []
    for case in chosen:
        steady_on, steady_off, traces, whole_on, whole_off = [], [], [], [], []
        job = None
        for _ in range(repeats):
            job = timed_job(case, steps, telemetry=True)
            off = timed_job(case, steps, telemetry=False)
            first = (job.measured[0] - 1) // job.per_epoch  # its epoch, 0-based
            keep = [e for e in range(1, len(job.epoch_seconds)) if e != first]
            steady_on.append(sum(job.epoch_seconds[e] for e in keep))
            steady_off.append(sum(off.epoch_seconds[e] for e in keep))
            traces.append(job.epoch_seconds[first] - off.epoch_seconds[first])
            whole_on.append(sum(job.epoch_seconds[1:]))
            whole_off.append(sum(off.epoch_seconds[1:]))
        assert job is not None
        overhead = statistics.median(steady_on) / statistics.median(steady_off) - 1
        costs = [measuring_cost(case, 3) for _ in range(repeats)]
        plain = statistics.median(c[0] for c in costs)
        measuring = statistics.median(c[1] for c in costs)
        # What the job's measuring points add to its plain steps, from the per-step costs.
        projected = len(job.measured) * (measuring - plain) / (job.steps * plain)
        rows.append(
            {
                "model": case.name,
                "steps": job.steps,
                "interval": job.interval,
                "points": len(job.measured),
                "seconds_auto": statistics.median(steady_on),
                "seconds_off": statistics.median(steady_off),
                "overhead": overhead,
                "plain_step_ms": 1e3 * plain,
                "measuring_step_ms": 1e3 * measuring,
                "overhead_from_step_costs": projected,
                "trace_seconds": statistics.median(traces),
                "overhead_with_trace": statistics.median(whole_on) / statistics.median(whole_off)
                - 1,
            }
        )
        target = (
            f" ({'meets' if projected <= 0.10 else 'ABOVE'} the 10% target)"
            if job.steps >= 1000
            else ""
        )
        print(
            f"{case.name}: {job.steps} steps, {len(job.measured)} measuring points: a measuring "
            f"step takes {1e3 * measuring:.1f} ms against {1e3 * plain:.1f} ms for a plain one, so "
            f"auto telemetry adds {100 * projected:.1f}%{target} (timed whole jobs: "
            f"{100 * overhead:.1f}%), plus {statistics.median(traces):.2f} s once to trace the "
            f"measuring step"
        )
    return rows


def run_loop(case: Case, loop: str, epochs: int, settings: dict[str, Any]) -> float:
    if loop == "model.fit":
        rate, fit_settings = fit_plain(case, epochs)
        settings.update(fit_settings)
        return rate
    return fit_thermoml(case, epochs, telemetry=loop == "thermoml")


def summarise(name: str, runs: dict[str, list[float]]) -> list[dict[str, Any]]:
    base = statistics.median(runs["model.fit"])
    rows = []
    for loop, values in runs.items():
        paired = [v / f for v, f in zip(values, runs["model.fit"], strict=True)]
        rows.append(
            {
                "model": name,
                "loop": loop,
                "median_samples_per_s": statistics.median(values),
                "ratio_to_fit": statistics.median(values) / base,
                "paired_ratio": statistics.median(paired),
                "runs": len(values),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="models to run (default: all)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--overhead-steps", type=int, default=1000, help="job length of the auto-interval part"
    )
    args = parser.parse_args()
    epochs, repeats = (2, 1) if args.quick else (args.epochs, args.repeats)
    chosen = [c for c in cases() if not args.only or c.name in args.only]
    runs = {c.name: {loop: [] for loop in LOOPS} for c in chosen}
    settings: dict[str, dict[str, Any]] = {c.name: {} for c in chosen}
    for repeat in range(repeats):
        order = LOOPS[repeat % len(LOOPS) :] + LOOPS[: repeat % len(LOOPS)]
        for case in chosen:
            for loop in order:
                rate = run_loop(case, loop, epochs, settings[case.name])
                runs[case.name][loop].append(rate)
                print(f"repeat {repeat + 1}/{repeats} {case.name:<11} {loop:<24} {rate:9.0f}/s")
    rows = [row for case in chosen for row in summarise(case.name, runs[case.name])]
    shown = [{**r, **{k: f"{r[k]:.3f}" for k in ("ratio_to_fit", "paired_ratio")}} for r in rows]
    columns = ["model", "loop", "median_samples_per_s", "ratio_to_fit", "paired_ratio", "runs"]
    print(table(shown, columns))
    for row in rows:
        if row["loop"] == "thermoml":
            verdict = "meets" if row["ratio_to_fit"] >= 0.9 else "BELOW"
            print(
                f"{row['model']}: thermoml with default telemetry runs at "
                f"{row['ratio_to_fit']:.2f} of model.fit ({verdict} the 0.90 target)"
            )
    # The auto interval's overhead on jobs of ≥ 1000 steps (quick: the autoencoder, shorter).
    overhead_cases = chosen[:1] if args.quick else [c for c in chosen if c.name != "diffusion"]
    overhead_steps = 2 * AUTO_MIN_INTERVAL if args.quick else args.overhead_steps
    overhead = auto_overhead(overhead_cases, overhead_steps, 1 if args.quick else repeats)
    percent = ("overhead", "overhead_from_step_costs", "overhead_with_trace")
    print(
        table(
            [{**r, **{k: f"{100 * r[k]:.1f}%" for k in percent}} for r in overhead], [*overhead[0]]
        )
    )
    report = {
        "auto_overhead": overhead,
        "epochs": epochs,
        "repeats": repeats,
        "models": {
            c.name: {
                "data": c.description,
                "rows": len(c.x),
                "batch_size": c.batch,
                "steps_per_epoch": math.ceil(len(c.x) / c.batch),
                "fit_settings": settings[c.name],
                "runs": runs[c.name],
            }
            for c in chosen
        },
        "rows": rows,
    }
    print(f"wrote {write_report('train_overhead', report)}")


if __name__ == "__main__":
    main()
