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
