"""The training loop shared by every gradient-trained kind, with thermodynamic telemetry.

A kind supplies an :class:`Objective` (per-example losses of a batch, with all randomness drawn
from an explicit stateless seed so a second forward pass can repeat it exactly); the
:class:`Trainer` runs compiled steps, every `telemetry.every_steps` steps a measuring step that
splits the batch into K micro-batches (gradient noise, θ·g, the momentum buffer, two-pass heat),
records metric points, checks for divergence, checkpoints every epoch and resumes from one.

TensorFlow is imported here; import this module only inside a job's process.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from ml.core.reporting import JobFailed, Reporter
from ml.core.spec import Resources
from ml.core.telemetry import Measurement, Thermometer
from ml.core.training_config import OptimizerConfig, ScheduleConfig, TrainingConfig

CHECKPOINT_STATE = "trainer.json"
CHECKPOINT_OPTIMIZER = "optimizer.npz"
CHECKPOINT_TELEMETRY = "telemetry.npz"
EPOCH_LOSS_ROWS = 2048
MIXED_POLICY = "mixed_bfloat16"
# Replica r > 0 of a data-parallel step draws its randomness from seeds shifted by r times this.
REPLICA_SEED_STRIDE = 7919


class Objective(Protocol):
    """What the trainer needs from a model."""

    @property
    def trainable_variables(self) -> list[tf.Variable]: ...

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Losses of shape [batch] and named per-example extras (each [batch])."""
        ...


def configure_determinism(config: TrainingConfig) -> None:
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()


def learning_rate_schedule(opt: OptimizerConfig, schedule: ScheduleConfig) -> Any:
    if schedule.name == "exponential_decay":
        return keras.optimizers.schedules.ExponentialDecay(
            opt.learning_rate, schedule.decay_steps, schedule.decay_rate, schedule.staircase
        )
    if schedule.name == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            opt.learning_rate, schedule.decay_steps, alpha=schedule.alpha
        )
    return opt.learning_rate  # constant, and `annealing` (which schedules the temperature)


def build_optimizer(config: TrainingConfig) -> keras.optimizers.Optimizer:
    opt, rate = config.optimizer, learning_rate_schedule(config.optimizer, config.schedule)
    if opt.name == "adam":
        betas = {"beta_1": opt.beta_1, "beta_2": opt.beta_2}
        return keras.optimizers.Adam(rate, **{k: v for k, v in betas.items() if v is not None})
    if opt.name == "rmsprop":
        return keras.optimizers.RMSprop(rate)
    # sgd, and sgld = sgd plus injected Gaussian noise (added by the trainer's step)
    return keras.optimizers.SGD(rate, momentum=opt.momentum)


def sgld_temperature(config: TrainingConfig, step: int) -> float:
    """T at `step`: constant, or lowered geometrically by the `annealing` schedule."""
    t0, s = config.optimizer.temperature, config.schedule
    if not s.anneals_temperature:
        return t0
    exponent = step // s.decay_steps if s.staircase else step / s.decay_steps
    return float(t0 * s.decay_rate**exponent)


def _short(device: str) -> str:
    """`/job:localhost/replica:0/task:0/device:GPU:1` -> `GPU:1`."""
    return device.rsplit("device:", 1)[-1]


def device_name() -> str:
    """The device(s) training runs on: the current strategy's replicas, comma-separated."""
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        return ",".join(_short(d) for d in strategy.extended.worker_devices)
    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def _mirrored(devices: int) -> tf.distribute.Strategy:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if len(gpus) < devices:
            raise JobFailed(
                "invalid_resources",
                f"resources.devices = {devices}, but this worker has {len(gpus)} GPU(s)",
            )
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(devices)])
    cpus = tf.config.list_physical_devices("CPU")
    # Once the runtime has started the split is refused: the devices it has are the ones there are.
    with suppress(RuntimeError):
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
        )
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < devices:
        raise JobFailed(
            "invalid_resources",
            f"resources.devices = {devices}, but this process has {len(logical)} CPU device(s) "
            "and no GPU (TensorFlow started before the CPU could be split)",
        )
    return tf.distribute.MirroredStrategy(
        [d.name for d in logical[:devices]],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )


@contextmanager
def job_devices(resources: Resources) -> Iterator[tf.distribute.Strategy]:
    """Builds and trains what runs inside on `resources.devices` devices (a MirroredStrategy
    scope when there are several) in `resources.mixed_precision`. Enter it before the job's
    first TensorFlow operation: splitting the CPU into logical devices is only possible then."""
    previous = keras.config.dtype_policy()
    strategy = (
        _mirrored(resources.devices) if resources.devices > 1 else tf.distribute.get_strategy()
    )
    if resources.mixed_precision:
        keras.config.set_dtype_policy(MIXED_POLICY)
    try:
        with strategy.scope():
            yield strategy
    finally:
        keras.config.set_dtype_policy(previous)


@dataclass
class FitResult:
    epochs_run: int
    steps: int
    final_loss: float
    final_val_loss: float | None
    stopped_early: bool
    seconds: float
    samples_per_second: float
    history: dict[str, list[float]] = field(default_factory=dict)

    def summary(self, *, resumed: bool) -> dict[str, Any]:
        """What every gradient-trained kind reports of its training in the job's result."""
        return {
            "final_loss": self.final_loss,
            "final_val_loss": self.final_val_loss,
            "epochs": self.epochs_run,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "resumed": resumed,
            "samples_per_second": self.samples_per_second,
            "train_seconds": self.seconds,
        }


def _data_options() -> tf.data.Options:
    options = tf.data.Options()
    # An autotuned iterator took up to 0.3 s to tear down at each epoch's end (a third of a
    # small epoch); rows already in memory need no tuning.
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return options


_DATA_OPTIONS = _data_options()


def _flat(variables: list[tf.Variable]) -> tf.Tensor:
    return tf.concat([tf.reshape(v, [-1]) for v in variables], axis=0)


def _sqnorm(tensors: list[tf.Tensor]) -> tf.Tensor:
    return tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors])


class Trainer:
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
        self.objective = objective
        self.config = config
        self.reporter = reporter
        self.prefix = metric_prefix
        self.extra_metrics = extra_metrics
        self.variables = list(objective.trainable_variables)
        self.n_params = int(sum(int(np.prod(v.shape)) for v in self.variables))
        self.optimizer = build_optimizer(config)
        self.optimizer.build(self.variables)
        opt = config.optimizer
        self.weight_decay = opt.weight_decay
        self.sgld = opt.name == "sgld"
        self.micro = config.telemetry.microbatches
        sampled = min(self.n_params, config.telemetry.entropy_coordinates)
        rng = np.random.default_rng(config.seed + 7)
        self.sample_index = tf.constant(
            np.sort(rng.choice(self.n_params, size=sampled, replace=False)), dtype=tf.int32
        )
        self.thermometer = Thermometer(
            optimizer=opt.name, momentum=opt.momentum, n_params=self.n_params, sampled=sampled
        )
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.base_seed = tf.constant(config.seed, dtype=tf.int64)
        self.temperature_var = tf.Variable(opt.temperature, dtype=tf.float32, trainable=False)
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.loss_count = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.extra_sums: dict[str, tf.Variable] = {}
        # Built under a MirroredStrategy's scope (see `job_devices`), the plain steps run on
        # every replica; measuring and evaluating steps run on the first one with the full batch.
        self.strategy = tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        step = self._step if self.replicas == 1 else self._distributed_step
        self._train_step = tf.function(step, reduce_retracing=True)
        self._measure_step = tf.function(self._measuring_step, reduce_retracing=True)
        self._eval_step = tf.function(self._evaluate, reduce_retracing=True)
        self.start_epoch = 0
        self.best_val: float | None = None
        self.bad_epochs = 0

    # --- compiled pieces ----------------------------------------------------------------

    def _seed(self, offset: int = 0) -> tf.Tensor:
        return tf.cast(tf.stack([self.base_seed, self.step_var * 64 + offset]), tf.int32)

    def _loss(self, x: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, dict]:
        per_example, extras = self.objective.per_example_loss(x, seed, True)
        loss = tf.reduce_mean(tf.cast(per_example, tf.float32))
        total = loss
        if self.weight_decay:
            total = loss + 0.5 * self.weight_decay * _sqnorm(self.variables)
        return loss, total, extras

    def _accumulate(self, loss: tf.Tensor, extras: dict[str, tf.Tensor]) -> None:
        self.loss_sum.assign_add(tf.cast(loss, tf.float64))
        self.loss_count.assign_add(1.0)
        for name, value in extras.items():
            self.extra_sums[name].assign_add(
                tf.cast(tf.reduce_mean(tf.cast(value, tf.float32)), tf.float64)
            )

    def _apply(self, grads: list[tf.Tensor]) -> None:
        # The rate of this update: read before `apply` advances the schedule's iteration.
        rate = tf.cast(self.optimizer.learning_rate, tf.float32)
        self._optimize(grads)
        if self.sgld:
            scale = tf.sqrt(2.0 * rate * self.temperature_var)
            for i, v in enumerate(self.variables):
                noise = tf.random.stateless_normal(v.shape, self._seed(40 + i % 20), dtype=v.dtype)
                v.assign_add(scale * noise)
        self.step_var.assign_add(1)

    def _optimize(self, grads: list[Any]) -> None:
        if self.replicas == 1:
            self.optimizer.apply(grads, self.variables)
            return
        # Keras applies gradients per replica and sums them over the replicas first: hand each
        # its share, or, for one gradient computed on the whole batch, a 1/N part of it.
        shared = not isinstance(grads[0], tf.distribute.DistributedValues)
        if shared:
            grads = [g / self.replicas for g in grads]

        def apply(*parts: tf.Tensor) -> None:
            # A shared tensor gets a copy on each replica's device, where the all-reduce wants it.
            self.optimizer.apply(
                [tf.identity(g) for g in parts] if shared else list(parts), self.variables
            )

        self.strategy.run(apply, args=tuple(grads))

    def _step(self, x: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss, total, extras = self._loss(x, self._seed())
        grads = tape.gradient(total, self.variables)
        self._apply(grads)
        self._accumulate(loss, extras)
        return loss

    def _replica_gradients(
        self, x: tf.Tensor, n: tf.Tensor
    ) -> tuple[tf.Tensor, list[tf.Tensor], dict[str, tf.Tensor]]:
        """One replica's share of a step on its rows of a batch of `n`: loss and extras summed,
        and gradients scaled so that their sum over replicas is the whole batch's gradient."""
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = self._seed() + tf.stack([REPLICA_SEED_STRIDE * tf.cast(replica, tf.int32), 0])
        with tf.GradientTape() as tape:
            per_example, extras = self.objective.per_example_loss(x, seed, True)
            total = tf.reduce_sum(tf.cast(per_example, tf.float32))
            share = total / n
            if self.weight_decay:
                share += 0.5 * self.weight_decay * _sqnorm(self.variables) / self.replicas
        grads = tape.gradient(share, self.variables)
        sums = {k: tf.reduce_sum(tf.cast(v, tf.float32)) for k, v in extras.items()}
        return total, grads, sums

    def _distributed_step(self, x: Any, n: tf.Tensor) -> tf.Tensor:
        total, grads, sums = self.strategy.run(self._replica_gradients, args=(x, n))

        def add(value: Any) -> tf.Tensor:
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

        self._apply(grads)
        loss = add(total) / n
        self._accumulate(loss, {k: add(v) / n for k, v in sums.items()})
        return loss

    def _micro_gradients(
        self, x: tf.Tensor
    ) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]:
        """Per micro-batch gradients of a measuring step, summed: Σg, Σ|g|², Σ loss before the
        update (with and without weight decay), Σ extras."""
        grad_sum = [tf.zeros_like(v) for v in self.variables]
        sq_sum = tf.constant(0.0)
        before = tf.constant(0.0)
        plain = tf.constant(0.0)
        extras_sum: dict[str, tf.Tensor] = {}
        for k, part in enumerate(tf.split(x, self.micro)):
            with tf.GradientTape() as tape:
                loss, total, extras = self._loss(part, self._seed(k + 1))
            grads = tape.gradient(total, self.variables)
            grad_sum = [a + g for a, g in zip(grad_sum, grads, strict=True)]
            sq_sum += _sqnorm(grads)
            before += total
            plain += loss
            for name, value in extras.items():
                mean = tf.reduce_mean(tf.cast(value, tf.float32))
                extras_sum[name] = extras_sum.get(name, 0.0) + mean
        return grad_sum, sq_sum, before, plain, extras_sum

    def _micro_losses(self, x: tf.Tensor) -> tf.Tensor:
        """Σ over micro-batches of the loss with weight decay (the heat pass)."""
        after = tf.constant(0.0)
        for k, part in enumerate(tf.split(x, self.micro)):
            after += self._loss(part, self._seed(k + 1))[1]
        return after

    def _on_replicas(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`; with several replicas, run by each on the same inputs (gradients need
        a replica context) and taken from the first."""
        if self.replicas == 1:
            return fn(*args)
        out = self.strategy.run(fn, args=args)
        return tf.nest.map_structure(lambda v: self.strategy.experimental_local_results(v)[0], out)

    def _measuring_step(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        grad_sum, sq_sum, before, plain, extras_sum = self._on_replicas(self._micro_gradients, x)
        k_float = float(self.micro)
        g_batch = [g / k_float for g in grad_sum]
        theta = _flat(self.variables)
        out = {
            "micro_sqnorm_mean": sq_sum / k_float,
            "batch_sqnorm": _sqnorm(g_batch),
            "theta_dot_grad": tf.reduce_sum(theta * _flat(g_batch)),
            "lr": tf.cast(self.optimizer.learning_rate, tf.float32),
        }
        self._apply(g_batch)
        self.step_var.assign_sub(1)  # the heat pass repeats this step's random draws
        if self.config.telemetry.heat:
            out["heat"] = (before - self._on_replicas(self._micro_losses, x)) / k_float
        self.step_var.assign_add(1)
        momentums = getattr(self.optimizer, "momentums", None)
        if self.config.optimizer.name in ("sgd", "sgld"):
            if momentums and self.config.optimizer.momentum > 0:
                # Keras keeps u <- μu − ηg; the buffer of v <- μv + g is v = −u/η.
                out["velocity_sqnorm"] = _sqnorm(list(momentums)) / tf.square(out["lr"])
            else:
                out["velocity_sqnorm"] = out["batch_sqnorm"]
        out["theta_sample"] = tf.gather(_flat(self.variables), self.sample_index)
        self._accumulate(plain / k_float, {n: v / k_float for n, v in extras_sum.items()})
        # Hand over the window's means and start a new window, inside the graph: one sync.
        count = tf.maximum(self.loss_count, 1.0)
        out["window_loss"] = self.loss_sum / count
        self.loss_sum.assign(0.0)
        for name, total in self.extra_sums.items():
            out[f"window_{name}"] = total / count
            total.assign(0.0)
        self.loss_count.assign(0.0)
        return out

    def _evaluate(self, x: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        per_example, extras = self.objective.per_example_loss(
            x, tf.constant([7, 7], tf.int32), False
        )
        return tf.reduce_sum(tf.cast(per_example, tf.float32)), {
            k: tf.reduce_sum(tf.cast(v, tf.float32)) for k, v in extras.items()
        }

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

    def _record(self, step: int, measured: dict[str, tf.Tensor], batch: int) -> float:
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
            velocity_sqnorm=float(host["velocity_sqnorm"]) if "velocity_sqnorm" in host else None,
            heat=float(host["heat"]) if "heat" in host else None,
            internal_energy=loss,
            theta_sample=host["theta_sample"],
            injected_temperature=float(self.temperature_var.numpy()) if self.sgld else None,
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
        return loss

    def fit(
        self,
        x_train: np.ndarray,
        x_val: np.ndarray | None = None,
        *,
        checkpoint_dir: Path | None = None,
        save_weights: Callable[[Path], None] | None = None,
        on_epoch_end: Callable[[int, int], None] | None = None,
    ) -> FitResult:
        """Train for `config.epochs`, resuming from `checkpoint_dir` when it holds a checkpoint."""
        cfg = self.config
        batch = cfg.batch_size
        n = len(x_train)
        if n < batch:
            batch = max(self.micro, (n // self.micro) * self.micro)
        if batch < 2 * self.micro:
            raise JobFailed("invalid_data", f"{n} training rows are too few for this batch size")
        restored = getattr(self, "_restored_extras", {})
        for name in self._extra_names(x_train[:batch]):
            initial = float(restored.get(name, 0.0))
            self.extra_sums[name] = tf.Variable(initial, dtype=tf.float64, trainable=False)
        steps_per_epoch = math.ceil(n / batch)
        total_steps = steps_per_epoch * cfg.epochs
        every = cfg.telemetry.every_steps
        step = int(self.step_var.numpy())
        history: dict[str, list[float]] = {"loss": [], "val_loss": []}
        started, seen = time.perf_counter(), 0
        epoch = self.start_epoch
        stopped_early = False
        last_loss = float("nan")
        val_loss: float | None = None
        for epoch in range(self.start_epoch, cfg.epochs):
            order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            data = tf.data.Dataset.from_tensor_slices(x_train[order]).batch(batch)
            data = data.prefetch(2).with_options(_DATA_OPTIONS)
            if self.replicas > 1:
                data = self.strategy.experimental_distribute_dataset(data)
            for x in data:
                rows = self._rows(x)
                if self.sgld:
                    self.temperature_var.assign(sgld_temperature(cfg, step))
                if (step + 1) % every == 0 and rows == batch:
                    measured = self._measure_step(self._gathered(x))
                    step += 1
                    self._record(step, measured, batch)
                elif self.replicas > 1:
                    self._train_step(x, tf.constant(rows, tf.float32))
                    step += 1
                else:
                    self._train_step(x)
                    step += 1
                seen += rows
            # The epoch's loss: measured at its end without training-time randomness, on up to
            # EPOCH_LOSS_ROWS training rows, so that it does not depend on `every_steps`.
            last_loss = self.evaluate(x_train[: min(n, EPOCH_LOSS_ROWS)])[0]
            if not math.isfinite(last_loss):
                raise JobFailed("diverged", f"the training loss became {last_loss} at step {step}")
            points = {"loss": last_loss, "epoch": float(epoch + 1)}
            if x_val is not None and len(x_val):
                val_loss = self.evaluate(x_val)[0]
                points["val_loss"] = val_loss
                history["val_loss"].append(val_loss)
            history["loss"].append(last_loss)
            self.reporter.metrics(step, {self.prefix + k: v for k, v in points.items()})
            self.reporter.progress(
                step / total_steps, epoch=epoch + 1, epochs=cfg.epochs, step=step
            )
            stop = self._early_stop(val_loss)
            if checkpoint_dir is not None and save_weights is not None:
                self.save_checkpoint(checkpoint_dir, save_weights, epoch + 1)
                self.reporter.checkpoint()
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, step)
            if stop:
                stopped_early = True
                break
        seconds = time.perf_counter() - started
        return FitResult(
            epochs_run=epoch + 1,
            steps=step,
            final_loss=last_loss,
            final_val_loss=val_loss,
            stopped_early=stopped_early,
            seconds=seconds,
            samples_per_second=seen / seconds if seconds > 0 else float("nan"),
            history=history,
        )

    def _rows(self, x: Any) -> int:
        if self.replicas == 1:
            return int(x.shape[0])
        return sum(int(part.shape[0]) for part in self.strategy.experimental_local_results(x))

    def _gathered(self, x: Any) -> tf.Tensor:
        """The whole batch of a distributed one, for a measuring step."""
        if self.replicas == 1:
            return x
        return tf.concat(self.strategy.experimental_local_results(x), axis=0)

    def _extra_names(self, x: np.ndarray) -> list[str]:
        _, extras = self.objective.per_example_loss(tf.constant(x), tf.constant([0, 0]), False)
        return sorted(extras)

    def _early_stop(self, val_loss: float | None) -> bool:
        rule = self.config.early_stopping
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
        self.loss_sum.assign(state["window"][0])
        self.loss_count.assign(state["window"][1])
        self._restored_extras = state.get("window_extras", {})
        self.start_epoch = int(state["epoch"])
        self.best_val = state["best_val"]
        self.bad_epochs = int(state["bad_epochs"])
        return True
