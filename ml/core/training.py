"""The training loop shared by every gradient-trained kind, with thermodynamic telemetry.

A kind supplies an :class:`Objective` (per-example losses of a batch, with all randomness drawn
from an explicit stateless seed so a second forward pass can repeat it exactly); the
:class:`Trainer` runs compiled steps (`ml.core.steps`), every `telemetry.every_steps` steps a
measuring step (`"auto"`: enough for at least 20 points a job, see `measuring_interval`) that
splits the batch into K micro-batches (gradient noise, θ·g, the momentum
buffer, two-pass heat), records metric points, checks for divergence, checkpoints every epoch
and resumes from one. :class:`Callback` objects hook into every step, measuring step and epoch
end; one ends the run by raising :class:`StopTraining`.

TensorFlow is imported here; import this module only inside a job's process.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ml.core.devices import MIXED_POLICY, device_name, job_devices
from ml.core.fit_run import FitResult, Run
from ml.core.optimizers import (
    build_optimizer,
    configure_determinism,
    heavy_ball_momentum,
    learning_rate_schedule,
    sgld_temperature,
)
from ml.core.reporting import JobFailed, Reporter
from ml.core.steps import Objective, TrainingSteps
from ml.core.telemetry import Measurement, Thermometer
from ml.core.training_config import TrainingConfig

__all__ = [
    "CHECKPOINT_STATE",
    "MIXED_POLICY",
    "Callback",
    "FitResult",
    "Objective",
    "StopTraining",
    "Trainer",
    "build_optimizer",
    "configure_determinism",
    "device_name",
    "job_devices",
    "learning_rate_schedule",
    "sgld_temperature",
]

CHECKPOINT_STATE = "trainer.json"
CHECKPOINT_OPTIMIZER = "optimizer.npz"
CHECKPOINT_TELEMETRY = "telemetry.npz"
EPOCH_LOSS_ROWS = 2048


class StopTraining(Exception):
    """Raised by a callback to end `fit` cleanly after the current step; FitResult.stopped_early
    is True. Raised during an epoch, the epoch's remaining batches are skipped, but it ends as
    usual (its loss, checkpoint and `on_epoch_end`) and the other callbacks still see the step.
    The checkpoint does not record the stop: a resumed job trains on from the next epoch unless
    the callback keeps its own record (as DEC's and DCN's `converged` flag does)."""


class Callback:
    """Hooks into Trainer.fit; each method is a no-op here, override what you need.

    `step` is the number of optimizer steps done so far, counted across epochs and resumes.
    The per-step hook runs between compiled steps: keep it to Python (no tensor-to-host copy)
    unless it acts only every so many steps."""

    def on_step(self, trainer: Trainer, step: int) -> None:
        """After every optimizer step (a measuring one too, after its `on_measure`)."""

    def on_measure(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """After a measuring (telemetry) step recorded its metric points: `metrics` are those
        points, named without the trainer's `metric_prefix`."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, step: int, logs: dict[str, float]) -> None:
        """After the epoch's loss/val_loss points and its checkpoint; `epoch` is 1-based and
        `logs` holds `loss` (and `val_loss` with validation rows)."""


def _notify(callbacks: Sequence[Callback], hook: str, *args: Any) -> bool:
    """Call `hook` of every callback in turn; True when one of them raised StopTraining."""
    stop = False
    for callback in callbacks:
        try:
            getattr(callback, hook)(*args)
        except StopTraining:
            stop = True
    return stop


class Thermostat(Callback):
    """`schedule: thermostat`: multiply the learning rate by `factor` each time the `equilibrium`
    metric is 1, then wait for a new equilibrium at the new rate (its window starts afresh)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def on_measure(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if metrics.get("equilibrium") == 1.0:
            rate = trainer.optimizer.learning_rate
            rate.assign(rate * self.factor)
            trainer.thermometer.equilibrium.reset()


def _data_options() -> tf.data.Options:
    options = tf.data.Options()
    # An autotuned iterator took up to 0.3 s to tear down at each epoch's end (a third of a
    # small epoch); rows already in memory need no tuning.
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return options


_DATA_OPTIONS = _data_options()


class Trainer(TrainingSteps):
    """Trains an objective on an array of examples; see the module docstring."""

    def __init__(
        self,
        objective: Objective,
        config: TrainingConfig,
        reporter: Reporter,
        *,
        metric_prefix: str = "",
        extra_metrics: Callable[[dict[str, float]], dict[str, float]] | None = None,
    ) -> None:
        super().__init__(objective, config)
        self.reporter = reporter
        self.prefix = metric_prefix
        self.extra_metrics = extra_metrics
        opt = config.optimizer
        self.thermometer = Thermometer(
            optimizer=opt.name,
            momentum=heavy_ball_momentum(opt),
            n_params=self.n_params,
            sampled=int(self.sample_index.shape[0]),
        )
        self.start_epoch = 0
        self.best_val: float | None = None
        self.bad_epochs = 0

    # --- the loop -----------------------------------------------------------------------

    def evaluate(self, x: np.ndarray) -> tuple[float, dict[str, float]]:
        """Mean per-example loss (and extras) over `x`, without training-time randomness."""
        total, extras, n = 0.0, {}, len(x)
        for start in range(0, n, 1024):
            loss, more = self._eval_step(tf.constant(x[start : start + 1024]))
            total += float(loss)
            for k, v in more.items():
                extras[k] = extras.get(k, 0.0) + float(v)
        return total / n, {k: v / n for k, v in extras.items()}

    def record(self, step: int, measured: dict[str, tf.Tensor], batch: int) -> dict[str, float]:
        """Report a measuring step's output as the metric points of `step` (with the metric
        prefix) and return them (without it); a loss that is not finite fails the job."""
        host = {k: v.numpy() for k, v in measured.items()}
        loss = float(host.pop("window_loss"))
        if not math.isfinite(loss):
            raise JobFailed("diverged", f"the training loss became {loss} at step {step}")
        extras = {
            k[len("window_") :]: float(host.pop(k)) for k in list(host) if k.startswith("window_")
        }
        measurement = Measurement(
            step=step,
            learning_rate=float(host["lr"]),
            batch_size=batch,
            micro_size=batch // self.micro,
            micro_sqnorm_mean=float(host["micro_sqnorm_mean"]),
            batch_sqnorm=float(host["batch_sqnorm"]),
            theta_dot_grad=float(host["theta_dot_grad"]),
            velocity_sqnorm=float(host["velocity_sqnorm"]),
            heat=float(host["heat"]) if "heat" in host else None,
            internal_energy=loss,
            theta_sample=host["theta_sample"],
            injected_temperature=float(self.temperature_var.numpy()) if self.sgld else None,
            precond_micro_sqnorm_mean=float(host["precond_micro_sqnorm_mean"]),
            precond_batch_sqnorm=float(host["precond_batch_sqnorm"]),
            step_rate=float(host["step_rate"]),
            centered=bool(host["centered"]),
        )
        points: dict[str, float] = {
            k: (float("nan") if v is None else v)
            for k, v in self.thermometer.update(measurement).items()
        }
        if self.extra_metrics is not None:
            points.update(self.extra_metrics(extras))
        else:
            points.update(extras)
        self.reporter.metrics(step, {self.prefix + k: v for k, v in points.items()})
        return points

    def fit(
        self,
        x_train: np.ndarray,
        x_val: np.ndarray | None = None,
        *,
        checkpoint_dir: Path | None = None,
        save_weights: Callable[[Path], None] | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> FitResult:
        """Train for `config.epochs`, resuming from `checkpoint_dir` when it holds a checkpoint;
        `callbacks` hook into its steps and epochs."""
        batch = self._batch_size(len(x_train))
        self.prepare(x_train[:batch])
        run = Run(
            batch=batch,
            total_steps=math.ceil(len(x_train) / batch) * self.config.epochs,
            every=self.measuring_interval(len(x_train)),
            step=int(self.step_var.numpy()),
            checkpoint_dir=checkpoint_dir,
            save_weights=save_weights,
            callbacks=list(callbacks),
        )
        if self.config.schedule.name == "thermostat":
            run.callbacks.insert(0, Thermostat(self.config.schedule.factor))
        epoch = self.start_epoch
        for epoch in range(self.start_epoch, self.config.epochs):
            asked = self._train_epoch(x_train, epoch, run)
            if self._end_epoch(x_train, x_val, epoch, run) or asked:
                run.stopped_early = True
                break
        return run.result(epochs_run=epoch + 1)

    def steps_per_epoch(self, rows: int) -> int:
        """Optimizer steps in an epoch of `rows` training rows (the batch shrinks to fit)."""
        return math.ceil(rows / self._batch_size(rows))

    def measuring_interval(self, rows: int) -> int:
        """Steps between measuring steps for `rows` training rows: `telemetry.every_steps`, or
        for "auto" from the job's full-batch steps (partial batches are not measured)."""
        full_steps = (rows // self._batch_size(rows)) * self.config.epochs
        return self.config.telemetry.interval(full_steps)

    def _batch_size(self, n: int) -> int:
        batch = self.config.batch_for(n)
        if n < batch:
            batch = max(self.micro, (n // self.micro) * self.micro)
        if batch < 2 * self.micro:
            raise JobFailed("invalid_data", f"{n} training rows are too few for this batch size")
        return batch

    def _train_epoch(self, x_train: np.ndarray, epoch: int, run: Run) -> bool:
        """The steps of one epoch; True when a callback asked to stop."""
        cfg, callbacks = self.config, run.callbacks
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(x_train))
        data = tf.data.Dataset.from_tensor_slices(x_train[order]).batch(run.batch)
        data = data.prefetch(2).with_options(_DATA_OPTIONS)
        if self.replicas > 1:
            data = self.strategy.experimental_distribute_dataset(data)
        for x in data:
            rows = self.rows(x)
            if self.sgld:
                self.temperature_var.assign(sgld_temperature(cfg, run.step))
            stop = False
            due = run.due or (run.step + 1) % run.every == 0
            run.due = due and rows != run.batch
            if due and rows == run.batch:
                measured = self.measuring_step(x)
                run.step += 1
                metrics = self.record(run.step, measured, run.batch)
                run.equilibrium = metrics.get("equilibrium")
                stop = _notify(callbacks, "on_measure", self, run.step, metrics)
            else:
                self.step(x)
                run.step += 1
            run.seen += rows
            if callbacks and (_notify(callbacks, "on_step", self, run.step) or stop):
                return True
        return False

    def _end_epoch(
        self, x_train: np.ndarray, x_val: np.ndarray | None, epoch: int, run: Run
    ) -> bool:
        """The epoch's loss points, progress and checkpoint; True when the run should stop."""
        # The epoch's loss: measured at its end without training-time randomness, on up to
        # EPOCH_LOSS_ROWS training rows, so that it does not depend on `every_steps`.
        loss = run.last_loss = self.evaluate(x_train[:EPOCH_LOSS_ROWS])[0]
        if not math.isfinite(loss):
            raise JobFailed("diverged", f"the training loss became {loss} at step {run.step}")
        points, logs = {"loss": loss, "epoch": float(epoch + 1)}, {"loss": loss}
        if x_val is not None and len(x_val):
            run.val_loss = points["val_loss"] = logs["val_loss"] = self.evaluate(x_val)[0]
            run.history["val_loss"].append(run.val_loss)
        run.history["loss"].append(loss)
        self.reporter.metrics(run.step, {self.prefix + k: v for k, v in points.items()})
        self.reporter.progress(
            run.step / run.total_steps, epoch=epoch + 1, epochs=self.config.epochs, step=run.step
        )
        stop = self._early_stop(run.val_loss, run.equilibrium)
        if run.checkpoint_dir is not None and run.save_weights is not None:
            self.save_checkpoint(run.checkpoint_dir, run.save_weights, epoch + 1)
            self.reporter.checkpoint()
        return _notify(run.callbacks, "on_epoch_end", self, epoch + 1, run.step, logs) or stop

    def _early_stop(self, val_loss: float | None, equilibrium: float | None) -> bool:
        rule = self.config.early_stopping
        if rule is not None and rule.monitor == "equilibrium":
            self.bad_epochs = self.bad_epochs + 1 if equilibrium == 1.0 else 0
            return self.bad_epochs >= rule.patience
        if rule is None or val_loss is None:
            return False
        if self.best_val is None or val_loss < self.best_val - rule.min_delta:
            self.best_val, self.bad_epochs = val_loss, 0
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= rule.patience

    # --- checkpoints --------------------------------------------------------------------

    def save_checkpoint(
        self, folder: Path, save_weights: Callable[[Path], None], epoch: int
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(folder)
        values = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(self.optimizer.variables)}
        np.savez(folder / CHECKPOINT_OPTIMIZER, **values)
        thermo, thermo_arrays = self.thermometer.state()
        for i, mean in enumerate(self.theta_mean):
            thermo_arrays[f"theta_mean_{i}"] = np.asarray(mean.numpy())
        thermo["theta_mean_weight"] = float(self.theta_mean_weight.numpy())
        np.savez(folder / CHECKPOINT_TELEMETRY, **thermo_arrays)
        state = {
            "epoch": epoch,
            "step": int(self.step_var.numpy()),
            "best_val": self.best_val,
            "bad_epochs": self.bad_epochs,
            "thermometer": thermo,
            "window": [float(self.loss_sum.numpy()), float(self.loss_count.numpy())],
            "window_extras": {k: float(v.numpy()) for k, v in self.extra_sums.items()},
        }
        # Written last: its presence marks a complete checkpoint.
        (folder / CHECKPOINT_STATE).write_text(json.dumps(state))

    def restore_checkpoint(self, folder: Path, load_weights: Callable[[Path], None]) -> bool:
        """Resume from a checkpoint in `folder`; False when there is none."""
        state_file = folder / CHECKPOINT_STATE
        if not state_file.exists():
            return False
        state = json.loads(state_file.read_text())
        load_weights(folder)
        with np.load(folder / CHECKPOINT_OPTIMIZER, allow_pickle=False) as saved:
            for i, v in enumerate(self.optimizer.variables):
                v.assign(saved[f"v{i}"])
        self.step_var.assign(int(state["step"]))
        with np.load(folder / CHECKPOINT_TELEMETRY, allow_pickle=False) as arrays:
            self.thermometer.restore(state["thermometer"], {k: arrays[k] for k in arrays.files})
            if "theta_mean_weight" in state["thermometer"]:  # absent from older checkpoints
                for i, mean in enumerate(self.theta_mean):
                    mean.assign(arrays[f"theta_mean_{i}"])
                self.theta_mean_weight.assign(state["thermometer"]["theta_mean_weight"])
        self.loss_sum.assign(state["window"][0])
        self.loss_count.assign(state["window"][1])
        self._restored_extras = state.get("window_extras", {})
        self.start_epoch = int(state["epoch"])
        self.best_val = state["best_val"]
        self.bad_epochs = int(state["bad_epochs"])
        return True
