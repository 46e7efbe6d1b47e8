"""The compiled pieces of the shared training loop: a plain step (on one replica or several),
the measuring step of the thermodynamic telemetry, and the evaluation pass.

:class:`TrainingSteps` holds an objective's variables, its optimizer and the running window of
losses; :class:`ml.core.training.Trainer` drives it. All randomness comes from stateless seeds
derived from the step count, so the measuring step's second (heat) pass repeats its draws.

TensorFlow is imported here; import this module only inside a job's process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from ml.core.optimizers import build_optimizer, heavy_ball_form
from ml.core.telemetry import THETA_MEAN_DECAY
from ml.core.training_config import TrainingConfig

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


def _flat(variables: list[tf.Variable]) -> tf.Tensor:
    return tf.concat([tf.reshape(v, [-1]) for v in variables], axis=0)


def _sqnorm(tensors: list[tf.Tensor]) -> tf.Tensor:
    return tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors])


def _weighted_sqnorm(weights: list[tf.Tensor], tensors: list[tf.Tensor]) -> tf.Tensor:
    return tf.add_n(
        [tf.reduce_sum(w * tf.square(t)) for w, t in zip(weights, tensors, strict=True)]
    )


class TrainingSteps:
    """An objective's variables and optimizer, and the compiled steps that update them."""

    def __init__(self, objective: Objective, config: TrainingConfig) -> None:
        self.objective = objective
        self.config = config
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
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.base_seed = tf.constant(config.seed, dtype=tf.int64)
        self.temperature_var = tf.Variable(opt.temperature, dtype=tf.float32, trainable=False)
        self.loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.loss_count = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.extra_sums: dict[str, tf.Variable] = {}
        # θ̄ (an EMA over measuring points, bias-corrected by its weight) for the virial.
        self.theta_mean = [
            tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in self.variables
        ]
        self.theta_mean_weight = tf.Variable(0.0, dtype=tf.float32, trainable=False)
        self._restored_extras: dict[str, float] = {}
        # Built under a MirroredStrategy's scope (see `job_devices`), the plain steps run on
        # every replica; measuring and evaluating steps run on the first one with the full batch.
        self.strategy = tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        step = self._step if self.replicas == 1 else self._distributed_step
        self._train_step = tf.function(step, reduce_retracing=True)
        self._measure_step = tf.function(self._measuring_step, reduce_retracing=True)
        self._eval_step = tf.function(self._evaluate, reduce_retracing=True)

    # --- the public steps ---------------------------------------------------------------

    def prepare(self, x: np.ndarray) -> None:
        """Open the window's sums of the objective's extras (named by a pass over `x`, a few
        rows); call once before the first step. A restored checkpoint's window continues."""
        _, extras = self.objective.per_example_loss(tf.constant(x), tf.constant([0, 0]), False)
        for name in sorted(extras):
            initial = float(self._restored_extras.get(name, 0.0))
            self.extra_sums[name] = tf.Variable(initial, dtype=tf.float64, trainable=False)

    def step(self, x: Any) -> None:
        """One optimizer step on the batch `x` (distributed or not), without a host copy."""
        if self.replicas > 1:
            self._train_step(x, tf.constant(self.rows(x), tf.float32))
        else:
            self._train_step(x)

    def measuring_step(self, x: Any) -> dict[str, tf.Tensor]:
        """One optimizer step on the batch `x` that also measures it (telemetry's inputs, and
        the window's mean losses, after which a new window starts); see `Trainer.record`."""
        return self._measure_step(self._gathered(x))

    def rows(self, x: Any) -> int:
        """The rows of a batch, summed over replicas for a distributed one."""
        if self.replicas == 1:
            return int(x.shape[0])
        return sum(int(part.shape[0]) for part in self.strategy.experimental_local_results(x))

    def _gathered(self, x: Any) -> tf.Tensor:
        """The whole batch of a distributed one, for a measuring step."""
        if self.replicas == 1:
            return x
        return tf.concat(self.strategy.experimental_local_results(x), axis=0)

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
    ) -> tuple[list[tf.Tensor], list[tf.Tensor], tf.Tensor, tf.Tensor, dict[str, tf.Tensor]]:
        """Per micro-batch gradients of a measuring step, summed: Σg, Σg² (per coordinate),
        Σ loss before the update (with and without weight decay), Σ extras."""
        grad_sum = [tf.zeros_like(v) for v in self.variables]
        sq_sum = [tf.zeros_like(v) for v in self.variables]
        before = tf.constant(0.0)
        plain = tf.constant(0.0)
        extras_sum: dict[str, tf.Tensor] = {}
        for k, part in enumerate(tf.split(x, self.micro)):
            with tf.GradientTape() as tape:
                loss, total, extras = self._loss(part, self._seed(k + 1))
            grads = tape.gradient(total, self.variables)
            grad_sum = [a + g for a, g in zip(grad_sum, grads, strict=True)]
            sq_sum = [a + tf.square(g) for a, g in zip(sq_sum, grads, strict=True)]
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

    def _centered_virial(self, g_batch: list[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """(θ − θ̄)·g with θ̄ from earlier measuring points, whether θ̄ had any, and θ̄ ← θ."""
        weight = self.theta_mean_weight
        scale = 1.0 / tf.maximum(weight, 1e-30)
        virial = tf.add_n(
            [
                tf.reduce_sum((v - m * scale) * g)
                for v, m, g in zip(self.variables, self.theta_mean, g_batch, strict=True)
            ]
        )
        a = THETA_MEAN_DECAY
        for v, m in zip(self.variables, self.theta_mean, strict=True):
            m.assign(a * m + (1.0 - a) * tf.cast(v, tf.float32))
        centered = weight > 0
        weight.assign(a * weight + (1.0 - a))
        return virial, centered

    def _measuring_step(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        grad_sum, sq_sum, before, plain, extras_sum = self._on_replicas(self._micro_gradients, x)
        k_float = float(self.micro)
        g_batch = [g / k_float for g in grad_sum]
        virial, centered = self._centered_virial(g_batch)
        out = {
            "micro_sqnorm_mean": tf.add_n([tf.reduce_sum(s) for s in sq_sum]) / k_float,
            "batch_sqnorm": _sqnorm(g_batch),
            "theta_dot_grad": virial,
            "centered": centered,
            "lr": tf.cast(self.optimizer.learning_rate, tf.float32),
        }
        self._apply(g_batch)
        self.step_var.assign_sub(1)  # the heat pass repeats this step's random draws
        if self.config.telemetry.heat:
            out["heat"] = (before - self._on_replicas(self._micro_losses, x)) / k_float
        self.step_var.assign_add(1)
        # The update as preconditioned heavy-ball SGD, from the optimizer's state after it.
        p, buffer, out["step_rate"] = heavy_ball_form(self.optimizer, g_batch, out["lr"])
        if p is None:
            out["precond_micro_sqnorm_mean"] = out["micro_sqnorm_mean"]
            out["precond_batch_sqnorm"] = out["batch_sqnorm"]
            out["velocity_sqnorm"] = _sqnorm(buffer)
        else:
            weighted = tf.add_n([tf.reduce_sum(w * s) for w, s in zip(p, sq_sum, strict=True)])
            out["precond_micro_sqnorm_mean"] = weighted / k_float
            out["precond_batch_sqnorm"] = _weighted_sqnorm(p, g_batch)
            out["velocity_sqnorm"] = _weighted_sqnorm(p, buffer)
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
