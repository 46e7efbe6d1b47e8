"""A training config's optimizer, learning-rate schedule, SGLD temperature and determinism.

TensorFlow is imported here; import this module only inside a job's process.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from ml.core.training_config import OptimizerConfig, ScheduleConfig, TrainingConfig


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


ADAM_BETA_1 = 0.9  # Keras's default


def heavy_ball_momentum(opt: OptimizerConfig) -> float:
    """μ of the optimizer read as heavy-ball preconditioned SGD (docs/thermodynamics.md): the
    momentum of sgd and sgld, adam's β₁ (m = (1 − β₁) v), none for rmsprop."""
    if opt.name == "adam":
        return opt.beta_1 if opt.beta_1 is not None else ADAM_BETA_1
    if opt.name == "rmsprop":
        return 0.0
    return opt.momentum


def heavy_ball_form(
    optimizer: keras.optimizers.Optimizer, grads: list[tf.Tensor], lr: tf.Tensor
) -> tuple[list[tf.Tensor] | None, list[tf.Tensor], tf.Tensor]:
    """The update just applied as θ ← θ − α P v with v ← μv + g: (P, or None for P = 1; the
    buffer v; α), read from the optimizer's own state after its update with rate `lr` and
    gradient `grads`. Adam: P_i = √(1 − β₂ᵗ)/(√v_i + ε) (its bias-corrected v̂ with Keras's ε),
    v = m/(1 − β₁), α = η(1 − β₁)/(1 − β₁ᵗ); RMSprop: P_i = 1/√(v_i + ε) as Keras applies it
    (no bias correction), v = g; SGD: P = 1, v = −u/η from Keras's u ← μu − ηg, or g."""
    if isinstance(optimizer, keras.optimizers.Adam):
        t = tf.cast(optimizer.iterations, tf.float32)
        beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
        correction = tf.sqrt(1.0 - tf.pow(beta_2, t))
        eps = float(optimizer.epsilon)
        p = [correction / (tf.sqrt(v) + eps) for v in optimizer._velocities]
        buffer = [m / (1.0 - beta_1) for m in optimizer._momentums]
        return p, buffer, lr * (1.0 - beta_1) / (1.0 - tf.pow(beta_1, t))
    if isinstance(optimizer, keras.optimizers.RMSprop):
        eps = float(optimizer.epsilon)
        return [tf.math.rsqrt(v + eps) for v in optimizer._velocities], grads, lr
    momentums = list(getattr(optimizer, "momentums", None) or [])
    if momentums:
        return None, [-u / lr for u in momentums], lr
    return None, grads, lr
