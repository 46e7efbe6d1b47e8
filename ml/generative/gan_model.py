"""GANs in TensorFlow: the two players, the alternating loop with each player's thermodynamic
telemetry, and the run of the `gan` kind.

Each player is trained by its own :class:`ml.core.training.Trainer` (its own optimizer, thermometer
and checkpoint), stepped alternately by :class:`GanLoop`: `d_steps` discriminator updates on
fresh real batches, then one generator update and the moving average of its weights. A telemetry
step measures each player on its own loss with the other player held fixed (its gradient noise,
θ·g, and the two-pass heat with the same z draws), so every `d_`/`g_` metric is the section A
quantity of that player. After each epoch the averaged generator's samples are measured against
held-out rows (:mod:`ml.generative.gan_quality`); the model keeps the best epoch's generator.

Imported inside the `gan` kind's `run`, never at start-up.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.core.networks import use_conv
from ml.core.reporting import JobFailed, Reporter, RunContext, RunOutcome
from ml.core.training import Trainer, configure_determinism, device_name
from ml.core.training_config import TrainingConfig
from ml.generative import shared as generative
from ml.generative.gan_networks import (
    conv_discriminator,
    conv_generator,
    dense_discriminator,
    dense_generator,
)
from ml.generative.gan_objectives import DiscriminatorObjective, GeneratorObjective
from ml.generative.gan_quality import EpochQuality, GeneratorAverage, refresh_batch_norm

MODEL_FILE = "generator.keras"
LOOP_STATE = "gan.json"
BEST_WEIGHTS = "best.weights.npz"
LN4 = math.log(4.0)


class Players:
    """The generator and discriminator of one GAN, and how each sees the other."""

    def __init__(self, params: Any, shape: tuple[int, ...], tanh: bool) -> None:
        self.params = params
        self.latent = params.latent_dim
        out = "tanh" if tanh else None
        momentum = params.batch_norm_momentum
        dense_momentum = momentum if params.batch_norm else None
        if use_conv(params.architecture, shape):
            self.generator = conv_generator(self.latent, shape, momentum, out)
            self.discriminator = conv_discriminator(shape, spectral=params.spectral)
        else:
            self.generator = dense_generator(
                self.latent, params.generator_hidden, shape, dense_momentum, out
            )
            self.discriminator = dense_discriminator(
                shape, params.discriminator_hidden, spectral=params.spectral
            )

    def z(self, n: tf.Tensor, seed: tf.Tensor, salt: int) -> tf.Tensor:
        seed = tf.random.experimental.stateless_fold_in(seed, salt)
        return tf.random.stateless_normal(tf.stack([n, self.latent]), seed)

    def logit(self, x: tf.Tensor) -> tf.Tensor:
        return self.discriminator(x, training=True)[:, 0]

    def network(self, name: str) -> keras.Model:
        return self.generator if name == "generator" else self.discriminator

    def save_weights(self, name: str, folder: Path) -> None:
        self.network(name).save_weights(folder / f"{name}.weights.h5")

    def load_weights(self, name: str, folder: Path) -> None:
        self.network(name).load_weights(folder / f"{name}.weights.h5")


def discriminator_config(params: Any, training: TrainingConfig) -> TrainingConfig:
    """The discriminator's training section: its own rate (two time-scale updates)."""
    if params.d_learning_rate is None:
        return training
    update = {"learning_rate": params.d_learning_rate}
    return training.model_copy(update={"optimizer": training.optimizer.model_copy(update=update)})


class GanLoop:
    """Alternates the two players' Trainers; records d_*/g_* telemetry, jsd_lower_bound (and
    wasserstein_estimate for wgan_gp), and each epoch's sample quality."""

    def __init__(
        self, players: Players, spec: Any, reporter: Reporter, quality: EpochQuality | None
    ) -> None:
        params = spec.params
        self.players = players
        self.config = spec.training
        self.params = params
        self.d_steps = params.discriminator_steps
        self.reporter = reporter
        self.quality = quality
        self.average = GeneratorAverage(players.generator, params.ema)
        self.last: dict[str, float] = {}  # the latest d_loss, g_loss, accuracies, bounds
        self.every = self.config.telemetry.every_steps  # set from the job's length in `fit`
        discriminator = DiscriminatorObjective(
            players,
            params.loss,
            label_smoothing=params.label_smoothing,
            gradient_penalty=params.gradient_penalty,
            r1=params.r1,
        )
        self.d = Trainer(
            discriminator,
            discriminator_config(params, spec.training),
            reporter,
            metric_prefix="d_",
            extra_metrics=self._d_metrics,
        )
        self.g = Trainer(
            GeneratorObjective(players, params.loss),
            spec.training,
            reporter,
            metric_prefix="g_",
            extra_metrics=self._g_metrics,
        )
        self.trainers = {"discriminator": self.d, "generator": self.g}
        self.start_epoch = 0
        self.iteration = 0
        self.stopped_early = False

    def _d_metrics(self, extras: dict[str, float]) -> dict[str, float]:
        values = {
            "loss": extras["player_loss"],
            "real_accuracy": extras["real_correct"],
            "fake_accuracy": extras["fake_correct"],
        }
        for name in ("gradient_penalty", "r1_penalty"):
            if name in extras:
                values[name] = extras[name]
        self.last.update({f"d_{k}": v for k, v in values.items()})
        # The discriminator's logit read as a classifier's (any objective): with hard labels,
        # (ln 4 − its BCE on real − its BCE on fake) / 2 ≤ JSD(data, generator).
        self.last["jsd_lower_bound"] = (LN4 - extras["real_bce"] - extras["fake_bce"]) / 2
        if self.params.loss == "wgan_gp":  # the critic's E d(real) − E d(fake) ≈ W₁
            self.last["wasserstein_estimate"] = extras["critic_gap"]
        return values

    def _g_metrics(self, extras: dict[str, float]) -> dict[str, float]:
        self.last["g_loss"] = extras["player_loss"]
        return {"loss": extras["player_loss"]}

    # --- checkpoints ----------------------------------------------------------------------

    def restore(self, folder: Path) -> bool:
        state = folder / LOOP_STATE
        if not state.exists():
            return False
        saved = json.loads(state.read_text())
        for name, trainer in self.trainers.items():
            trainer.restore_checkpoint(
                folder / name, functools.partial(self.players.load_weights, name)
            )
        self.average.load(folder)
        self.start_epoch, self.iteration = int(saved["epoch"]), int(saved["iteration"])
        if self.quality is not None and "quality" in saved:
            weights = None
            if (folder / BEST_WEIGHTS).exists():
                with np.load(folder / BEST_WEIGHTS, allow_pickle=False) as arrays:
                    weights = [arrays[f"w{i}"] for i in range(len(arrays.files))]
            self.quality.restore(saved["quality"], weights)
        return True

    def _checkpoint(self, folder: Path, epoch: int) -> None:
        for name, trainer in self.trainers.items():
            save = functools.partial(self.players.save_weights, name)
            trainer.save_checkpoint(folder / name, save, epoch)
        self.average.save(folder)
        state: dict[str, Any] = {"epoch": epoch, "iteration": self.iteration}
        if self.quality is not None:
            state["quality"] = self.quality.state()
            if self.quality.best_epoch == epoch and self.quality.best_weights is not None:
                arrays = {f"w{i}": w for i, w in enumerate(self.quality.best_weights)}
                np.savez(folder / BEST_WEIGHTS, **arrays)
        (folder / LOOP_STATE).write_text(json.dumps(state))  # last: marks a whole checkpoint
        self.reporter.checkpoint()

    # --- training -------------------------------------------------------------------------

    def fit(
        self, x: np.ndarray, data: generative.GenerativeData, checkpoint_dir: Path | None
    ) -> dict[str, Any]:
        cfg = self.config
        micro = cfg.telemetry.microbatches
        batch = min(cfg.batch_size, (len(x) // micro) * micro)
        per_epoch = (len(x) // batch) // self.d_steps if batch else 0
        if batch < 2 * micro or per_epoch < 1:
            raise JobFailed(
                "invalid_data", f"{len(x)} training rows are too few for this batch size"
            )
        for trainer in self.trainers.values():
            trainer.prepare(x[:batch])
        # Generator iterations between measurements ("auto": from the job's iterations).
        self.every = cfg.telemetry.interval(per_epoch * cfg.epochs)
        started = time.perf_counter()
        epochs_run = self.start_epoch
        for epoch in range(self.start_epoch, cfg.epochs):
            epochs_run = epoch + 1
            self._epoch(x, epoch, batch, per_epoch)
            stop = self._end_epoch(epoch + 1, data, batch)
            self.reporter.progress(
                (epoch + 1) / cfg.epochs, epoch=epoch + 1, epochs=cfg.epochs, step=self.iteration
            )
            if checkpoint_dir is not None:
                self._checkpoint(checkpoint_dir, epoch + 1)
            if stop:
                self.stopped_early = True
                break
        return {
            "iterations": self.iteration,
            "batch_size": batch,
            "epochs": epochs_run,
            "train_seconds": time.perf_counter() - started,
        }

    def _epoch(self, x: np.ndarray, epoch: int, batch: int, per_epoch: int) -> None:
        cfg = self.config
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(x))
        batches = x[order[: per_epoch * self.d_steps * batch]]
        batches = batches.reshape(per_epoch * self.d_steps, batch, *x.shape[1:])
        for i in range(per_epoch):
            measure = (self.iteration + 1) % self.every == 0
            for j in range(self.d_steps):
                real = tf.constant(batches[i * self.d_steps + j])
                if measure and j == self.d_steps - 1:
                    measured_d = self.d.measuring_step(real)
                else:
                    self.d.step(real)
            if measure:
                measured_g = self.g.measuring_step(real)
            else:
                self.g.step(real)
            self.average.update()
            self.iteration += 1
            if measure:
                self.d.record(self.iteration, measured_d, batch)
                self.g.record(self.iteration, measured_g, batch)
                bounds = {"jsd_lower_bound": self.last["jsd_lower_bound"]}
                if "wasserstein_estimate" in self.last:
                    bounds["wasserstein_estimate"] = self.last["wasserstein_estimate"]
                self.reporter.metrics(self.iteration, bounds)

    def sample(self, n: int, batch: int, seed: int) -> np.ndarray:
        """n rows (scaled units) from the averaged generator, batch norm in inference mode
        after re-estimating its statistics."""
        model = self.average.model
        refresh_batch_norm(model, self.players.latent, batch, seed)
        z = np.random.default_rng([seed, 4]).standard_normal((n, self.players.latent))
        return model(tf.constant(z.astype(np.float32)), training=False).numpy()

    def _end_epoch(self, epoch: int, data: generative.GenerativeData, batch: int) -> bool:
        """The epoch's points and the best generator so far; True when early stopping says so."""
        points = {"epoch": float(epoch)}
        stop = False
        if self.quality is not None:
            samples = self.sample(len(self.quality.floor_rows), batch, self.config.seed)
            raw = to_data_units(samples, data)
            points.update(self.quality.measure(raw))
            rule = self.config.early_stopping
            min_delta = rule.min_delta if rule is not None else 0.0
            if self.params.keep == "best":
                self.quality.note(epoch, min_delta, self.average.model.get_weights())
            else:
                self.quality.note(epoch, min_delta, [])
            stop = rule is not None and self.quality.bad_epochs >= rule.patience
        self.reporter.metrics(self.iteration, points)
        return stop

    def final_generator(self, batch: int) -> keras.Model:
        """The averaged generator, with the best epoch's weights if kept, batch norm refreshed."""
        model = self.average.model
        if self.quality is not None and self.params.keep == "best" and self.quality.best_weights:
            model.set_weights(self.quality.best_weights)
        refresh_batch_norm(model, self.players.latent, batch, self.config.seed)
        return model


# --- running the kind --------------------------------------------------------------------------


def uses_tanh(data: generative.GenerativeData) -> bool:
    return data.scaler.method == "minmax"


def to_data_units(samples: np.ndarray, data: generative.GenerativeData) -> np.ndarray:
    scaled = (samples + 1.0) / 2.0 if uses_tanh(data) else samples
    return data.scaler.inverse_transform(scaled.astype(np.float32))


def train_gan(
    spec: Any, reporter: Reporter, context: RunContext, capabilities: list[str]
) -> RunOutcome:
    from ml.generative.gan_serving import GanServable

    params, training = spec.params, spec.training
    configure_determinism(training)
    data = generative.prepare(spec, context, params.evaluation_split)
    tanh = uses_tanh(data)
    train = data.train * 2.0 - 1.0 if tanh else data.train  # minmax [0, 1] → tanh's [-1, 1]
    try:
        players = Players(params, data.input_shape, tanh)
    except ValueError as exc:
        raise JobFailed("invalid_data", str(exc)) from exc
    loop = GanLoop(players, spec, reporter, EpochQuality.for_data(data, training.seed))
    resumed = loop.restore(context.checkpoint_dir)
    fitted = loop.fit(train.astype(np.float32), data, context.checkpoint_dir)
    generator = loop.final_generator(fitted["batch_size"])

    servable = GanServable.from_models(generator, data, tanh, capabilities)
    generated = servable.generate(n=len(data.held_out_b), seed=training.seed)["samples"]
    # The per-epoch measure's feature classifier is the one the evaluation would fit.
    classifier = loop.quality.classifier if loop.quality is not None else None
    quality = generative.sample_quality(data, generated, training.seed, classifier=classifier)
    model = generative.model_outcome(
        data,
        context,
        ("generator", MODEL_FILE, generator),
        capabilities=capabilities,
        calibration=servable.calibration,
        evaluation=quality,
    )
    kept = loop.quality.best_epoch if loop.quality and params.keep == "best" else fitted["epochs"]
    result = {
        **fitted,
        "resumed": resumed,
        "stopped_early": loop.stopped_early,
        "kept_epoch": kept,
        "energy_units": "each player's loss per example: "
        + ("binary cross-entropy (nats)" if params.loss == "non_saturating" else "critic units"),
        **loop.last,
        **generative.result_quality(quality),
    }
    result.pop("batch_size")
    return RunOutcome(result=result, device=device_name(), model=model)
