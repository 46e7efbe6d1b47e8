"""The TensorFlow training loop (ml.core.training.Trainer) on a tiny linear regression."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from ml.core.reporting import JobFailed, MemoryReporter
from ml.core.training import Callback, StopTraining, Trainer, configure_determinism
from ml.core.training_config import (
    AUTO_BATCH,
    AUTO_MAX_POINTS,
    AUTO_MIN_INTERVAL,
    AUTO_MIN_POINTS,
    AUTO_MIN_STEPS_PER_EPOCH,
    TrainingConfig,
    auto_interval,
)

D = 4
N_TRAIN, N_VAL, BATCH, MICRO = 224, 32, 16, 4
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 14, no partial batch
TELEMETRY = (
    "internal_energy",
    "lr",
    "grad_noise_scale",
    "temperature_nominal",
    "temperature_virial",
    "heat",
)


class LinearObjective:
    """ℓ_i = ½(x_i·w + b − y_i)²; a row of x packs the D features and then the target."""

    def __init__(self, nan_from_step: int | None = None) -> None:
        self.w = tf.Variable(tf.zeros([D]))
        self.b = tf.Variable(0.0)
        self.nan_from_step = nan_from_step

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return [self.w, self.b]

    def per_example_loss(self, x: tf.Tensor, seed: tf.Tensor, training: bool):
        residual = tf.linalg.matvec(x[:, :D], self.w) + self.b - x[:, D]
        loss = 0.5 * tf.square(residual)
        if self.nan_from_step is not None and training:
            # The trainer's seed is [seed, 64 · step + offset]: poison every step ≥ nan_from_step.
            late = seed[1] >= 64 * self.nan_from_step
            loss = loss + tf.where(late, tf.constant(math.nan), 0.0)
        return loss, {}

    def save(self, folder: Path) -> None:
        np.savez(folder / "weights.npz", w=self.w.numpy(), b=self.b.numpy())

    def load(self, folder: Path) -> None:
        with np.load(folder / "weights.npz") as saved:
            self.w.assign(saved["w"])
            self.b.assign(saved["b"])


def make_data(seed: int = 0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_TRAIN + N_VAL, D)) * scale
    y = x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.3 + 0.5 * rng.normal(size=len(x))
    rows = np.concatenate([x, y[:, None]], axis=1).astype(np.float32)
    return rows[:N_TRAIN], rows[N_TRAIN:]


def full_loss(rows: np.ndarray, w: np.ndarray, b: float) -> float:
    r = rows[:, :D].astype(np.float64) @ w + b - rows[:, D]
    return float(np.mean(0.5 * r**2))


def make_config(**overrides: Any) -> TrainingConfig:
    spec: dict[str, Any] = {
        "epochs": 3,
        "batch_size": BATCH,
        "seed": 3,
        "optimizer": {"name": "sgd", "learning_rate": 0.01},
        "telemetry": {"every_steps": 5, "microbatches": MICRO},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return TrainingConfig.model_validate(spec)


def run(
    config: TrainingConfig, objective: LinearObjective | None = None, **fit_kwargs: Any
) -> tuple[Trainer, MemoryReporter, Any, LinearObjective]:
    objective = objective or LinearObjective()
    reporter = MemoryReporter()
    trainer = Trainer(objective, config, reporter)
    train, val = make_data()
    result = trainer.fit(train, val, **fit_kwargs)
    return trainer, reporter, result, objective


@pytest.fixture
def deterministic() -> Iterator[Callable[[TrainingConfig], None]]:
    """configure_determinism, undone afterwards (op determinism is process-wide)."""
    was_on = tf_config.is_op_determinism_enabled()
    yield configure_determinism
    if not was_on:
        tf_config.disable_op_determinism()


def steps_of(reporter: MemoryReporter, name: str) -> list[int]:
    return sorted(reporter.points[name])


# (a) ---------------------------------------------------------------------------------------


def test_training_reduces_loss_and_records_points_at_the_telemetry_steps() -> None:
    config = make_config(optimizer={"learning_rate": 0.1})
    train, _ = make_data()
    initial = full_loss(train, np.zeros(D), 0.0)
    _, reporter, result, objective = run(config)

    assert result.epochs_run == 3 and result.steps == 3 * STEPS_PER_EPOCH
    assert result.history["loss"][-1] < result.history["loss"][0] < initial
    assert result.final_loss < 0.2 * initial
    # The epoch's `loss` is the training loss of the final weights.
    assert result.final_loss == pytest.approx(
        full_loss(train, objective.w.numpy(), float(objective.b.numpy())), rel=1e-5
    )

    every = config.telemetry.every_steps
    expected = list(range(every, result.steps + 1, every))
    for name in TELEMETRY:
        assert steps_of(reporter, name) == expected, name
    epoch_ends = [STEPS_PER_EPOCH * (e + 1) for e in range(3)]
    assert steps_of(reporter, "loss") == epoch_ends
    assert steps_of(reporter, "val_loss") == epoch_ends
    _, losses = reporter.series("loss")
    assert losses == pytest.approx(result.history["loss"])
    _, energy = reporter.series("internal_energy")
    assert energy[-1] < energy[0]
    for name in ("temperature_nominal", "heat", "grad_noise_scale", "temperature_noise"):
        assert all(math.isfinite(v) for v in reporter.series(name)[1]), name
    virial = reporter.series("temperature_virial")[1]  # centred on θ̄ from the second point on
    assert math.isnan(virial[0]) and all(math.isfinite(v) for v in virial[1:])


def test_internal_energy_is_the_window_mean_of_the_data_loss_without_weight_decay() -> None:
    # With a negligible learning rate θ stays put; every_steps = 2 splits the epoch into 7
    # windows of 2 batches (one plain step, one measuring step) that cover every row once, so
    # the windows' mean is the full-data loss at θ, without the weight-decay penalty.
    config = make_config(
        epochs=1,
        optimizer={"learning_rate": 1e-9, "weight_decay": 1.0},
        telemetry={"every_steps": 2},
    )
    objective = LinearObjective()
    objective.w.assign([1.0, 1.0, 1.0, 1.0])
    _, reporter, _, _ = run(config, objective)
    train, _ = make_data()
    _, energy = reporter.series("internal_energy")
    assert len(energy) == STEPS_PER_EPOCH // 2
    assert np.mean(energy) == pytest.approx(full_loss(train, np.ones(D), 0.0), rel=1e-5)


# (b) ---------------------------------------------------------------------------------------


def test_lr_follows_the_exponential_decay_schedule() -> None:
    config = make_config(
        schedule={
            "name": "exponential_decay",
            "decay_steps": 10,
            "decay_rate": 0.96,
            "staircase": True,
        }
    )
    _, reporter, _, _ = run(config)
    steps, rates = reporter.series("lr")
    assert steps == list(range(5, 3 * STEPS_PER_EPOCH + 1, 5))
    # The point at step s is the rate of the update that took the step count from s − 1 to s
    # (Keras evaluates the schedule at optimizer.iterations = s − 1).
    expected = [0.01 * 0.96 ** ((s - 1) // 10) for s in steps]
    assert rates == pytest.approx(expected, rel=1e-6)
    assert len(set(np.round(rates, 9))) == 4  # it did decay (at 10, 20, 30 and 40)
    _, nominal = reporter.series("temperature_nominal")
    assert nominal == pytest.approx([r / (2 * BATCH) for r in rates], rel=1e-6)


# (c) ---------------------------------------------------------------------------------------


def test_deterministic_runs_repeat_exactly(deterministic) -> None:
    # SGLD draws noise every step: the repeat covers the stateless random draws too.
    config = make_config(
        deterministic=True, optimizer={"name": "sgld", "momentum": 0.5, "temperature": 1e-3}
    )
    deterministic(config)
    _, first, result_a, _ = run(config)
    _, second, result_b, _ = run(config)
    assert result_a.history == result_b.history
    for name in (*TELEMETRY, "temperature_noise", "weight_entropy", "fdr_ratio"):
        np.testing.assert_array_equal(first.series(name)[1], second.series(name)[1], err_msg=name)
    # ... and the seed matters.
    _, _, result_c, _ = run(make_config(deterministic=True, seed=4, optimizer=config.optimizer))
    assert result_c.history["loss"] != result_a.history["loss"]


# (d) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer", [{"name": "adam"}, {"name": "rmsprop"}, {"name": "sgd", "momentum": 0.9}]
)
def test_noise_temperature_and_fdr_are_defined_for_every_optimizer(optimizer) -> None:
    _, reporter, _, _ = run(make_config(epochs=1, optimizer=optimizer))
    for name in ("temperature_noise", "fdr_ratio", "temperature_virial", "entropy_production"):
        values = reporter.series(name)[1][1:]  # the first point has no θ̄ yet
        assert values and all(math.isfinite(v) for v in values), (name, values)
    assert all(v > 0 for v in reporter.series("temperature_noise")[1])


# (e) ---------------------------------------------------------------------------------------

RESUME = {
    "deterministic": True,
    "optimizer": {"momentum": 0.9},
    "schedule": {"name": "exponential_decay", "decay_steps": 10, "decay_rate": 0.96},
}


def test_resume_from_a_checkpoint_continues_the_run(tmp_path: Path, deterministic) -> None:
    deterministic(make_config(**RESUME))
    folder = tmp_path / "checkpoint"
    first = LinearObjective()
    _, part1, result1, _ = run(
        make_config(epochs=2, **RESUME), first, checkpoint_dir=folder, save_weights=first.save
    )
    assert part1.checkpoints == 2 and result1.steps == 2 * STEPS_PER_EPOCH

    fresh = LinearObjective()
    reporter = MemoryReporter()
    trainer = Trainer(fresh, make_config(epochs=4, **RESUME), reporter)
    assert trainer.restore_checkpoint(folder, fresh.load)
    recorder = Recorder()
    train, val = make_data()
    resumed = trainer.fit(
        train, val, checkpoint_dir=folder, save_weights=fresh.save, callbacks=[recorder]
    )
    epochs = [(epoch, step) for epoch, step, _ in recorder.epochs]
    assert epochs == [(3, 3 * STEPS_PER_EPOCH), (4, 4 * STEPS_PER_EPOCH)]
    assert reporter.points["epoch"] == {3 * STEPS_PER_EPOCH: 3.0, 4 * STEPS_PER_EPOCH: 4.0}

    _, whole, uninterrupted, reference = run(make_config(epochs=4, **RESUME))
    for name in TELEMETRY:
        before, after = steps_of(part1, name), steps_of(reporter, name)
        assert not set(before) & set(after), name  # no step recorded twice
        assert min(after) > result1.steps
        assert before + after == steps_of(whole, name), name  # and none missing
    # The learning rate continues the schedule (optimizer.iterations was restored).
    assert reporter.series("lr")[1] == pytest.approx(
        [whole.points["lr"][s] for s in steps_of(reporter, "lr")], rel=1e-6
    )
    assert resumed.final_loss == pytest.approx(uninterrupted.final_loss, rel=1e-6)
    assert resumed.history["loss"] == pytest.approx(uninterrupted.history["loss"][2:], rel=1e-6)
    np.testing.assert_allclose(fresh.w.numpy(), reference.w.numpy(), rtol=1e-6)


def test_resume_continues_the_telemetry(tmp_path: Path, deterministic) -> None:
    deterministic(make_config(**RESUME))
    folder = tmp_path / "checkpoint"
    first = LinearObjective()
    run(make_config(epochs=2, **RESUME), first, checkpoint_dir=folder, save_weights=first.save)
    fresh = LinearObjective()
    reporter = MemoryReporter()
    trainer = Trainer(fresh, make_config(epochs=4, **RESUME), reporter)
    trainer.restore_checkpoint(folder, fresh.load)
    trainer.fit(*make_data(), checkpoint_dir=folder, save_weights=fresh.save)
    _, whole, _, _ = run(make_config(epochs=4, **RESUME))
    for name in ("temperature_virial", "heat", "weight_entropy"):
        steps = steps_of(reporter, name)
        np.testing.assert_allclose(
            reporter.series(name)[1], [whole.points[name][s] for s in steps], rtol=1e-5
        )


# (f) ---------------------------------------------------------------------------------------


def test_a_nan_loss_fails_the_job_as_diverged_naming_the_step() -> None:
    # NaN from the 8th step (step count 7 → 8); the next telemetry record is at step 10.
    config = make_config(epochs=1)
    with pytest.raises(JobFailed) as failure:
        run(config, LinearObjective(nan_from_step=7))
    assert failure.value.code == "diverged"
    assert "nan" in failure.value.message.lower()
    assert re.search(r"\bstep 10\b", failure.value.message), failure.value.message


def test_a_huge_learning_rate_fails_the_job_as_diverged() -> None:
    config = make_config(epochs=2, optimizer={"learning_rate": 10.0})
    with pytest.raises(JobFailed) as failure:
        run(config)
    assert failure.value.code == "diverged"
    step = re.search(r"\bstep (\d+)\b", failure.value.message)
    assert step and 1 <= int(step.group(1)) <= 2 * STEPS_PER_EPOCH, failure.value.message


# (g) ---------------------------------------------------------------------------------------


def test_sgld_annealing_lowers_the_injected_temperature() -> None:
    config = make_config(
        optimizer={"name": "sgld", "temperature": 1e-3},
        schedule={"name": "annealing", "decay_steps": 10, "decay_rate": 0.5},
    )
    _, reporter, _, _ = run(config)
    steps, temperatures = reporter.series("temperature_injected")
    assert steps == steps_of(reporter, "lr")
    assert all(b < a for a, b in itertools.pairwise(temperatures))
    # The temperature of a step is set from the step count before it (s − 1).
    assert temperatures == pytest.approx([1e-3 * 0.5 ** ((s - 1) / 10) for s in steps], rel=1e-6)
    # The learning rate stays constant under `annealing`.
    assert reporter.series("lr")[1] == pytest.approx([0.01] * len(steps), rel=1e-6)


# (h) ---------------------------------------------------------------------------------------


def test_two_pass_heat_is_positive_early_in_sgd_on_a_convex_problem() -> None:
    config = make_config(epochs=1, optimizer={"learning_rate": 0.05}, telemetry={"every_steps": 1})
    _, reporter, _, _ = run(config)
    _, heat = reporter.series("heat")
    assert len(heat) == STEPS_PER_EPOCH
    assert np.mean(heat) > 0 and heat[0] > 0


# The measuring step against a NumPy oracle --------------------------------------------------


def test_measuring_step_matches_a_numpy_oracle() -> None:
    lr, mu, wd = 0.05, 0.9, 0.1
    config = make_config(
        optimizer={"learning_rate": lr, "momentum": mu, "weight_decay": wd},
        telemetry={"every_steps": 1},
    )
    objective = LinearObjective()
    theta = np.array([0.5, -1.0, 2.0, 0.25, 0.75])  # w then b
    objective.w.assign(theta[:D])
    objective.b.assign(theta[D])
    trainer = Trainer(objective, config, MemoryReporter())
    train, _ = make_data()

    def oracle(rows: np.ndarray, theta: np.ndarray) -> dict[str, Any]:
        feats = np.concatenate([rows[:, :D], np.ones((len(rows), 1))], axis=1).astype(np.float64)
        target = rows[:, D].astype(np.float64)
        micro = []
        for part_x, part_y in zip(np.split(feats, MICRO), np.split(target, MICRO), strict=True):
            r = part_x @ theta - part_y
            micro.append(part_x.T @ r / len(r) + wd * theta)
        g = np.mean(micro, axis=0)

        def total(p: np.ndarray) -> float:  # mean over micro-batches of their loss + penalty
            return float(np.mean(0.5 * (feats @ p - target) ** 2) + 0.5 * wd * p @ p)

        return {
            "micro_sqnorm_mean": np.mean([m @ m for m in micro]),
            "batch_sqnorm": g @ g,
            "theta_dot_grad": theta @ g,
            "g": g,
            "total": total,
        }

    velocity = np.zeros_like(theta)
    centre, weight = np.zeros_like(theta), 0.0  # θ̄: an EMA (0.9) over measuring points
    for batch in (train[:BATCH], train[BATCH : 2 * BATCH]):
        want = oracle(batch, theta)
        got = {k: v.numpy() for k, v in trainer._measure_step(tf.constant(batch)).items()}
        velocity = mu * velocity + want["g"]  # v ← μv + g; Keras: u = −η v
        new_theta = theta - lr * velocity
        for key in ("micro_sqnorm_mean", "batch_sqnorm"):
            assert float(got[key]) == pytest.approx(want[key], rel=1e-5), key
            assert float(got[f"precond_{key}"]) == pytest.approx(want[key], rel=1e-5)  # P = 1
        deviation = theta - (centre / weight if weight else 0.0)
        assert bool(got["centered"]) == (weight > 0)
        assert float(got["theta_dot_grad"]) == pytest.approx(deviation @ want["g"], abs=1e-5)
        centre, weight = 0.9 * centre + 0.1 * theta, 0.9 * weight + 0.1
        assert float(got["step_rate"]) == pytest.approx(lr, rel=1e-6)
        assert float(got["velocity_sqnorm"]) == pytest.approx(velocity @ velocity, rel=1e-5)
        heat = want["total"](theta) - want["total"](new_theta)
        assert float(got["heat"]) == pytest.approx(heat, rel=1e-3)
        current = np.concatenate([objective.w.numpy(), [objective.b.numpy()]])
        np.testing.assert_allclose(current, new_theta, rtol=1e-5)
        theta = new_theta


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_measuring_step_reads_the_preconditioner_of_adaptive_optimizers(name: str) -> None:
    lr, b1, b2, rho, eps = 0.05, 0.9, 0.999, 0.9, 1e-7
    config = make_config(optimizer={"name": name, "learning_rate": lr})
    trainer = Trainer(LinearObjective(), config, MemoryReporter())
    train, _ = make_data()
    theta = np.zeros(D + 1)
    m = v = np.zeros(D + 1)
    for t, batch in enumerate((train[:BATCH], train[BATCH : 2 * BATCH]), start=1):
        feats = np.concatenate([batch[:, :D], np.ones((BATCH, 1))], axis=1).astype(np.float64)
        micro = [
            px.T @ (px @ theta - py) / len(py)
            for px, py in zip(np.split(feats, MICRO), np.split(batch[:, D], MICRO), strict=True)
        ]
        g = np.mean(micro, axis=0)
        got = {k: v.numpy() for k, v in trainer._measure_step(tf.constant(batch)).items()}
        if name == "adam":  # Keras: θ −= η √(1 − β₂ᵗ)/(1 − β₁ᵗ) · m / (√v + ε)
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            p = math.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
            buffer, rate = m / (1 - b1), lr * (1 - b1) / (1 - b1**t)
        else:  # Keras: θ −= η g / √(v + ε)
            v = rho * v + (1 - rho) * g * g
            p, buffer, rate = 1 / np.sqrt(v + eps), g, lr
        theta = theta - rate * p * buffer
        assert float(got["step_rate"]) == pytest.approx(rate, rel=1e-6)
        assert float(got["precond_batch_sqnorm"]) == pytest.approx(p @ (g * g), rel=1e-4)
        want = np.mean([p @ (q * q) for q in micro])
        assert float(got["precond_micro_sqnorm_mean"]) == pytest.approx(want, rel=1e-4)
        assert float(got["velocity_sqnorm"]) == pytest.approx(p @ (buffer**2), rel=1e-4)
    current = np.concatenate([trainer.variables[0].numpy(), [trainer.variables[1].numpy()]])
    np.testing.assert_allclose(current, theta, rtol=1e-4, atol=1e-6)


def test_adam_takes_its_betas_and_other_optimizers_refuse_them() -> None:
    from pydantic import ValidationError

    from ml.core.training import build_optimizer

    lr, b1, b2 = 0.1, 0.5, 0.99
    config = TrainingConfig(
        optimizer={"name": "adam", "learning_rate": lr, "beta_1": b1, "beta_2": b2}
    )
    optimizer = build_optimizer(config)
    w = tf.Variable([0.0])
    optimizer.build([w])
    m = v = 0.0
    expected = 0.0
    for step, g in enumerate((1.0, 3.0), start=1):  # Adam's update, bias-corrected
        optimizer.apply([tf.constant([g])], [w])
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        expected -= lr * (m / (1 - b1**step)) / math.sqrt(v / (1 - b2**step))
    assert float(w.numpy()[0]) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValidationError, match="beta_1 and beta_2 are adam's; sgd has none"):
        TrainingConfig(optimizer={"name": "sgd", "beta_1": 0.5})
    # A stored spec is re-read whole (every field written out): that must validate again.
    for name in ("adam", "sgd", "rmsprop", "sgld"):
        stored = TrainingConfig(optimizer={"name": name}).model_dump(mode="json")
        assert TrainingConfig.model_validate(stored).optimizer.name == name
    default = build_optimizer(TrainingConfig())
    assert (float(default.beta_1), float(default.beta_2)) == (0.9, 0.999)


# Callbacks -----------------------------------------------------------------------------------


class Recorder(Callback):
    """Notes every hook's arguments; raises StopTraining at `stop_at` from `hook`."""

    def __init__(self, stop_at: int | None = None, hook: str = "on_step") -> None:
        self.steps: list[int] = []
        self.measured: list[tuple[int, dict[str, float]]] = []
        self.epochs: list[tuple[int, int, dict[str, float]]] = []
        self.stop_at, self.hook = stop_at, hook
        self.trainers: set[int] = set()

    def _maybe_stop(self, hook: str, at: int) -> None:
        if hook == self.hook and at == self.stop_at:
            raise StopTraining

    def on_step(self, trainer: Trainer, step: int) -> None:
        self.trainers.add(id(trainer))
        self.steps.append(step)
        self._maybe_stop("on_step", step)

    def on_measure(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.measured.append((step, metrics))
        self._maybe_stop("on_measure", step)

    def on_epoch_end(self, trainer: Trainer, epoch: int, step: int, logs: dict[str, float]) -> None:
        self.epochs.append((epoch, step, logs))
        self._maybe_stop("on_epoch_end", epoch)


def test_callbacks_see_every_step_every_measuring_step_and_every_epoch_end() -> None:
    config = make_config()
    seen, plain = Recorder(), Callback()  # the base class's hooks do nothing
    trainer, reporter, result, _ = run(config, callbacks=[plain, seen])
    assert seen.trainers == {id(trainer)}
    assert seen.steps == list(range(1, result.steps + 1))  # once per step, in order
    every = config.telemetry.every_steps
    assert [step for step, _ in seen.measured] == list(range(every, result.steps + 1, every))
    for step, metrics in seen.measured:  # the points recorded at that step
        assert metrics["internal_energy"] == reporter.points["internal_energy"][step]
        assert set(TELEMETRY) <= set(metrics)
    assert [(e, s) for e, s, _ in seen.epochs] == [(e, e * STEPS_PER_EPOCH) for e in (1, 2, 3)]
    assert [logs["loss"] for *_, logs in seen.epochs] == result.history["loss"]
    assert [logs["val_loss"] for *_, logs in seen.epochs] == result.history["val_loss"]
    assert not result.stopped_early


def test_a_metric_prefix_is_not_in_the_metrics_a_callback_gets() -> None:
    seen = Recorder()
    reporter = MemoryReporter()
    trainer = Trainer(LinearObjective(), make_config(epochs=1), reporter, metric_prefix="p_")
    trainer.fit(make_data()[0], callbacks=[seen])
    step, metrics = seen.measured[0]
    assert "internal_energy" in metrics and "p_internal_energy" in reporter.points
    assert metrics["lr"] == reporter.points["p_lr"][step]
    assert [set(logs) for *_, logs in seen.epochs] == [{"loss"}]  # no validation rows


def test_stop_training_from_a_step_ends_fit_after_that_step() -> None:
    stop_at = STEPS_PER_EPOCH + 3
    stopper, other = Recorder(stop_at=stop_at), Recorder()
    _, reporter, result, _ = run(make_config(), callbacks=[stopper, other])
    assert result.stopped_early
    assert result.steps == stop_at and result.epochs_run == 2
    assert other.steps == list(range(1, stop_at + 1))  # the other callbacks saw the step too
    # The interrupted epoch still ends: its loss point, at the step the run stopped.
    assert steps_of(reporter, "loss") == [STEPS_PER_EPOCH, stop_at]
    assert len(result.history["loss"]) == 2
    assert [(e, s) for e, s, _ in other.epochs] == [(1, STEPS_PER_EPOCH), (2, stop_at)]


def test_stop_training_from_a_measuring_step_or_an_epoch_end() -> None:
    every = make_config().telemetry.every_steps
    _, _, measured, _ = run(make_config(), callbacks=[Recorder(2 * every, "on_measure")])
    assert measured.stopped_early and measured.steps == 2 * every
    _, _, ended, _ = run(make_config(), callbacks=[Recorder(1, "on_epoch_end")])
    assert ended.stopped_early and ended.epochs_run == 1 and ended.steps == STEPS_PER_EPOCH


def test_stopping_resumes_no_further_than_the_checkpoint_it_wrote(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    first = LinearObjective()
    _, reporter, result, _ = run(
        make_config(),
        first,
        checkpoint_dir=folder,
        save_weights=first.save,
        callbacks=[Recorder(stop_at=3)],
    )
    assert result.stopped_early and reporter.checkpoints == 1
    fresh = LinearObjective()
    trainer = Trainer(fresh, make_config(), MemoryReporter())
    assert trainer.restore_checkpoint(folder, fresh.load)
    assert trainer.start_epoch == 1 and int(trainer.step_var.numpy()) == 3


# Measuring interval -------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 3, 19, 20, 24, 100, 999, 1000, 1001, 4321, 10**4, 10**6])
def test_auto_interval_gives_every_job_between_20_and_about_200_points(total: int) -> None:
    every = auto_interval(total)
    points = total // every
    assert points >= min(total, AUTO_MIN_POINTS)
    assert points <= max(AUTO_MAX_POINTS, AUTO_MIN_POINTS) + 1
    if total <= AUTO_MIN_POINTS:
        assert every == 1  # a short job measures every step
    if total >= AUTO_MIN_POINTS * AUTO_MIN_INTERVAL:
        assert every >= AUTO_MIN_INTERVAL  # the cost bound of long jobs


def test_auto_is_the_default_and_a_three_epoch_job_has_20_points() -> None:
    assert TrainingConfig().telemetry.every == "auto"
    assert TrainingConfig().model_dump(mode="json")["telemetry"]["every_steps"] == "auto"
    config = make_config(telemetry={"every_steps": "auto"})
    _, reporter, result, _ = run(config)
    assert result.steps == 3 * STEPS_PER_EPOCH  # 42 steps: every 2nd one
    assert len(steps_of(reporter, "internal_energy")) >= AUTO_MIN_POINTS


def test_a_measurement_due_on_a_partial_batch_is_taken_at_the_next_full_one() -> None:
    # 220 rows: 13 full batches and one of 12 rows an epoch (steps 14, 28, 42 are partial);
    # the old loop skipped 14 and 28 instead.
    config = make_config(telemetry={"every_steps": 7})
    trainer = Trainer(LinearObjective(), config, MemoryReporter())
    reporter = trainer.reporter
    trainer.fit(make_data()[0][:220])
    assert steps_of(reporter, "internal_energy") == [7, 15, 21, 29, 35]  # 42 is the last step


# Equilibrium: the thermostat schedule and early stopping ------------------------------------

THERMOSTAT = {
    "epochs": 30,
    "optimizer": {"learning_rate": 0.2},
    "telemetry": {"every_steps": 3},
}


def test_thermostat_lowers_the_rate_at_each_equilibrium() -> None:
    config = make_config(**THERMOSTAT, schedule={"name": "thermostat", "factor": 0.3})
    _, reporter, _, _ = run(config)
    steps, rates = reporter.series("lr")
    equilibrium = reporter.points["equilibrium"]
    lowered = [s for s, a, b in zip(steps[1:], rates, rates[1:], strict=False) if b < a]
    assert lowered, "the rate was never lowered"
    for step, rate in zip(steps, rates, strict=True):
        k = sum(1 for s in lowered if s <= step)  # reductions before this point's update
        assert rate == pytest.approx(0.2 * 0.3**k, rel=1e-5)
    for s in lowered:  # each reduction follows a point in equilibrium
        before = max(p for p in steps if p < s)
        assert equilibrium[before] == 1.0
    _, constant, _, _ = run(make_config(**THERMOSTAT))
    assert constant.series("lr")[1] == pytest.approx([0.2] * len(constant.series("lr")[1]))


def test_early_stopping_on_equilibrium() -> None:
    config = make_config(**THERMOSTAT, early_stopping={"monitor": "equilibrium", "patience": 1})
    _, reporter, result, _ = run(config)
    assert result.stopped_early and result.epochs_run < 30
    last = max(reporter.points["equilibrium"])
    assert reporter.points["equilibrium"][last] == 1.0


@pytest.mark.parametrize("microbatches", [2, 3, 4, 5, 8, 48, 64])
@pytest.mark.parametrize("rows", [1, 16, 63, 64, 100, 290, 511, 512, 513, 10_000, 10**9])
def test_auto_batch_size_gives_small_data_sets_at_least_8_steps_an_epoch(
    rows: int, microbatches: int
) -> None:
    config = TrainingConfig.model_validate({"telemetry": {"microbatches": microbatches}})
    batch = config.batch_for(rows)
    assert batch % microbatches == 0 and batch >= 2 * microbatches
    assert batch <= max(AUTO_BATCH, 2 * microbatches)
    if batch > 2 * microbatches:  # not at its smallest: the data set gives 8 full steps
        assert rows // batch >= AUTO_MIN_STEPS_PER_EPOCH
    if rows >= AUTO_MIN_STEPS_PER_EPOCH * AUTO_BATCH:
        assert batch == config.largest_batch
    assert config.largest_batch == max(AUTO_BATCH // microbatches * microbatches, 2 * microbatches)
    fixed = TrainingConfig.model_validate(
        {"batch_size": 6 * microbatches, "telemetry": {"microbatches": microbatches}}
    )
    assert fixed.batch_for(rows) == fixed.largest_batch == 6 * microbatches


def test_auto_batch_size_is_the_default_and_a_fixed_one_is_still_checked() -> None:
    assert TrainingConfig().batch_size == "auto"
    with pytest.raises(ValueError, match=r"multiple of telemetry\.microbatches"):
        TrainingConfig.model_validate({"batch_size": 30})
    for bad in ("Auto", "", 1, 0, None, [64], "64\x00"):
        with pytest.raises(ValueError):
            TrainingConfig.model_validate({"batch_size": bad})
