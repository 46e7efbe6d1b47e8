"""GANs in TensorFlow: the networks, the two players' objectives, the alternating loop with each
player's thermodynamic telemetry, and the serving side.

Each player is trained by its own :class:`ml.core.training.Trainer` (its own optimizer, thermometer
and checkpoint), stepped alternately by :class:`GanLoop`: `d_steps` discriminator updates on
fresh real batches, then one generator update. A telemetry step measures each player on its own
loss with the other player held fixed (its gradient noise, θ·g, and the two-pass heat with the
same z draws), so every `d_`/`g_` metric is the section A quantity of that player.

Imported inside the `gan` kind's `run` and `load`, never at start-up.
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
from ml.generative import shared as generative
from ml.generative.gan_networks import (
    conv_discriminator,
    conv_generator,
    dense_discriminator,
    dense_generator,
)

MODEL_FILE = "generator.keras"
LOOP_STATE = "gan.json"
LN4 = math.log(4.0)
BN_REFRESH_BATCHES = 30


class Players:
    """The generator and discriminator of one GAN, and how each sees the other."""

    def __init__(self, params: Any, shape: tuple[int, ...], tanh: bool) -> None:
        self.params = params
        self.latent = params.latent_dim
        out = "tanh" if tanh else None
        if use_conv(params.architecture, shape):
            self.generator = conv_generator(self.latent, shape, params.batch_norm_momentum, out)
            self.discriminator = conv_discriminator(shape)
        else:
            self.generator = dense_generator(
                self.latent, params.generator_hidden, shape, params.batch_norm_momentum, out
            )
            self.discriminator = dense_discriminator(shape, params.discriminator_hidden)

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


class PlayerObjective:
    """One player's loss with the other player held fixed: trains `player`'s variables."""

    player = ""

    def __init__(self, players: Players) -> None:
        self.players = players

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return list(self.players.network(self.player).trainable_variables)


class DiscriminatorObjective(PlayerObjective):
    """Per example: BCE(D(x_i), 1 − s) + BCE(D(G(z_i)), 0), the generator fixed."""

    player = "discriminator"

    def __init__(self, players: Players, label_smoothing: float) -> None:
        super().__init__(players)
        self.target = 1.0 - label_smoothing

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        p = self.players
        fake = tf.stop_gradient(p.generator(p.z(tf.shape(x)[0], seed, 1), training=True))
        real_logit, fake_logit = p.logit(x), p.logit(fake)
        smoothed = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.fill(tf.shape(real_logit), self.target), logits=real_logit
        )
        real_bce, fake_bce = tf.nn.softplus(-real_logit), tf.nn.softplus(fake_logit)
        loss = smoothed + fake_bce
        return loss, {
            "player_loss": loss,  # not "loss": the trainer's window keeps that name
            "real_bce": real_bce,  # with hard labels: what the JSD bound needs
            "fake_bce": fake_bce,
            "real_correct": tf.cast(real_logit > 0, tf.float32),
            "fake_correct": tf.cast(fake_logit < 0, tf.float32),
        }


class GeneratorObjective(PlayerObjective):
    """Per example: −ln D(G(z_i)) (the non-saturating loss), the discriminator fixed; x only
    sets how many z are drawn."""

    player = "generator"

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        p = self.players
        fake = p.generator(p.z(tf.shape(x)[0], seed, 2), training=True)
        loss = tf.nn.softplus(-p.logit(fake))
        return loss, {"player_loss": loss}


# --- the alternating loop ----------------------------------------------------------------------


class GanLoop:
    """Alternates the two players' Trainers; records d_*/g_* telemetry and jsd_lower_bound."""

    def __init__(self, players: Players, spec: Any, reporter: Reporter) -> None:
        self.players = players
        self.config = spec.training
        self.d_steps = spec.params.d_steps
        self.reporter = reporter
        self.last: dict[str, float] = {}  # the latest d_loss, g_loss, accuracies, jsd bound
        self.d = Trainer(
            DiscriminatorObjective(players, spec.params.label_smoothing),
            self.config,
            reporter,
            metric_prefix="d_",
            extra_metrics=self._d_metrics,
        )
        self.g = Trainer(
            GeneratorObjective(players),
            self.config,
            reporter,
            metric_prefix="g_",
            extra_metrics=self._g_metrics,
        )
        self.trainers = {"discriminator": self.d, "generator": self.g}
        self.start_epoch = 0
        self.iteration = 0

    def _d_metrics(self, extras: dict[str, float]) -> dict[str, float]:
        # L_D with hard labels: mean BCE on real plus mean BCE on fake (Goodfellow 2014).
        values = {
            "loss": extras["player_loss"],
            "real_accuracy": extras["real_correct"],
            "fake_accuracy": extras["fake_correct"],
        }
        self.last.update({f"d_{k}": v for k, v in values.items()})
        self.last["jsd_lower_bound"] = (LN4 - extras["real_bce"] - extras["fake_bce"]) / 2
        return values

    def _g_metrics(self, extras: dict[str, float]) -> dict[str, float]:
        self.last["g_loss"] = extras["player_loss"]
        return {"loss": extras["player_loss"]}

    # Each Trainer's steps are driven one at a time here (`Trainer.fit` runs one objective's
    # loop): `prepare`, `step`, `measuring_step` and `record` are its step-level parts.
    def _prepare(self, x: np.ndarray) -> None:
        for trainer in self.trainers.values():
            trainer.prepare(x)

    def restore(self, folder: Path) -> bool:
        state = folder / LOOP_STATE
        if not state.exists():
            return False
        saved = json.loads(state.read_text())
        for name, trainer in self.trainers.items():
            trainer.restore_checkpoint(
                folder / name, functools.partial(self.players.load_weights, name)
            )
        self.start_epoch, self.iteration = int(saved["epoch"]), int(saved["iteration"])
        return True

    def _checkpoint(self, folder: Path, epoch: int) -> None:
        for name, trainer in self.trainers.items():
            save = functools.partial(self.players.save_weights, name)
            trainer.save_checkpoint(folder / name, save, epoch)
        state = {"epoch": epoch, "iteration": self.iteration}
        (folder / LOOP_STATE).write_text(json.dumps(state))  # last: marks a whole checkpoint
        self.reporter.checkpoint()

    def fit(self, x: np.ndarray, checkpoint_dir: Path | None) -> dict[str, Any]:
        cfg = self.config
        micro = cfg.telemetry.microbatches
        batch = min(cfg.batch_size, (len(x) // micro) * micro)
        per_epoch = (len(x) // batch) // self.d_steps
        if batch < 2 * micro or per_epoch < 1:
            raise JobFailed(
                "invalid_data", f"{len(x)} training rows are too few for this batch size"
            )
        self._prepare(x[:batch])
        started = time.perf_counter()
        every = cfg.telemetry.every_steps
        total = per_epoch * cfg.epochs
        for epoch in range(self.start_epoch, cfg.epochs):
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(x))
            batches = x[order[: per_epoch * self.d_steps * batch]]
            batches = batches.reshape(per_epoch * self.d_steps, batch, *x.shape[1:])
            for i in range(per_epoch):
                measure = (self.iteration + 1) % every == 0
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
                self.iteration += 1
                if measure:
                    self.d.record(self.iteration, measured_d, batch)
                    self.g.record(self.iteration, measured_g, batch)
                    self.reporter.metrics(
                        self.iteration, {"jsd_lower_bound": self.last["jsd_lower_bound"]}
                    )
            self.reporter.metrics(self.iteration, {"epoch": float(epoch + 1)})
            self.reporter.progress(
                self.iteration / total, epoch=epoch + 1, epochs=cfg.epochs, step=self.iteration
            )
            if checkpoint_dir is not None:
                self._checkpoint(checkpoint_dir, epoch + 1)
        return {
            "iterations": self.iteration,
            "batch_size": batch,
            "epochs": cfg.epochs,
            "train_seconds": time.perf_counter() - started,
        }

    def refresh_batch_norm(self, batch: int, seed: int) -> None:
        """Re-estimate the generator's batch-norm statistics on fresh z with the final weights
        (the measuring steps' micro-batches and heat passes also moved them)."""
        rng = np.random.default_rng([seed, 3])
        for _ in range(BN_REFRESH_BATCHES):
            z = rng.standard_normal((batch, self.players.latent)).astype(np.float32)
            self.players.generator(tf.constant(z), training=True)


# --- running the kind --------------------------------------------------------------------------


def uses_tanh(data: generative.GenerativeData) -> bool:
    return data.scaler.method == "minmax"


def train_gan(
    spec: Any, reporter: Reporter, context: RunContext, capabilities: list[str]
) -> RunOutcome:
    params, training = spec.params, spec.training
    configure_determinism(training)
    data = generative.prepare(spec, context, params.evaluation_split)
    shape = data.input_shape
    tanh = uses_tanh(data)
    train = data.train * 2.0 - 1.0 if tanh else data.train  # minmax [0, 1] → tanh's [-1, 1]
    try:
        players = Players(params, shape, tanh)
    except ValueError as exc:
        raise JobFailed("invalid_data", str(exc)) from exc
    loop = GanLoop(players, spec, reporter)
    resumed = loop.restore(context.checkpoint_dir)
    fitted = loop.fit(train.astype(np.float32), context.checkpoint_dir)
    loop.refresh_batch_norm(fitted["batch_size"], training.seed)

    servable = GanServable.from_models(players.generator, data, tanh, capabilities)
    generated = servable.generate(n=len(data.held_out_b), seed=training.seed)["samples"]
    quality = generative.sample_quality(data, generated, training.seed)
    model = generative.model_outcome(
        data,
        context,
        ("generator", MODEL_FILE, players.generator),
        capabilities=capabilities,
        calibration=servable.calibration,
        evaluation=quality,
    )
    result = {
        "iterations": fitted["iterations"],
        "epochs": fitted["epochs"],
        "train_seconds": fitted["train_seconds"],
        "resumed": resumed,
        "energy_units": "each player's loss: mean binary cross-entropy (nats) per example",
        **loop.last,
        **generative.result_quality(quality),
    }
    return RunOutcome(result=result, device=device_name(), model=model)


# --- serving -----------------------------------------------------------------------------------


class GanServable(generative.GenerativeServable):
    """generate: z ~ N(0, I) through the generator (batch norm in inference mode)."""

    title = "gan samples"

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        super().__init__(files, meta)
        generator = keras.models.load_model(files["generator"], compile=False, safe_mode=True)
        self._setup(generator)

    @classmethod
    def from_models(
        cls,
        generator: keras.Model,
        data: generative.GenerativeData,
        tanh: bool,
        capabilities: list[str],
    ) -> GanServable:
        self = cls.__new__(cls)
        meta = {
            "input_shape": list(data.input_shape),
            "preprocessing": data.scaler.to_dict(),
            "calibration": {
                "latent_dim": int(generator.input_shape[-1]),
                "output": "tanh, mapped from [-1, 1] to minmax's [0, 1]" if tanh else "linear",
                "tanh_minmax": tanh,
            },
            "capabilities": capabilities,
        }
        generative.GenerativeServable.__init__(self, {}, meta)
        self._setup(generator)
        return self

    def _setup(self, generator: keras.Model) -> None:
        self.latent_dim = int(generator.input_shape[-1])
        self.tanh_minmax = bool(self.calibration.get("tanh_minmax", False))
        spec = [tf.TensorSpec((None, self.latent_dim), tf.float32)]
        self._sample = tf.function(
            lambda z: generator(z, training=False), input_signature=spec, autograph=False
        )

    def _generate_scaled(self, n: int, rng: np.random.Generator, **options: Any) -> np.ndarray:
        if options:
            raise ValueError(
                f"a gan takes no {' or '.join(sorted(options))}: only n and seed "
                "(sampler and steps are for diffusion models)"
            )
        z = rng.standard_normal((n, self.latent_dim)).astype(np.float32)
        out = np.concatenate(
            [self._sample(tf.constant(z[i : i + 4096])).numpy() for i in range(0, n, 4096)]
        )
        return (out + 1.0) / 2.0 if self.tanh_minmax else out
