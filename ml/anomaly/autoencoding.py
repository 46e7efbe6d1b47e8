"""Autoencoders and VAEs in training: their objectives, likelihoods and saved artifacts
(TensorFlow inside).

Imported only inside the kinds' `run` (through their params' `objective`), by the serving side
and by the clustering kinds that pre-train an autoencoder, so TensorFlow never loads where the
kinds' specs are merely validated. What differs between the autoencoder and the VAE in training,
calibration and reporting is said by their objective classes here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.core.networks import (
    OUTPUT_DTYPE,
    Stack,
    as_model,
    decoder_stack,
    encoder_trunk,
    use_conv,
    with_heads,
)
from ml.core.preprocessing import Scaler

LOG_2PI = math.log(2 * math.pi)
VARIANCE_FLOOR = 1e-6
# σ of a Gaussian decoder stays above e^-3 ≈ 0.05 (in scaled units): a feature that is constant in
# the training data (an image's border pixels) would otherwise drive σ to 0 and its density to ∞.
LOG_SIGMA_MIN = -3.0

ScoreFn = Callable[[tf.Tensor], tf.Tensor]
ExtraMetrics = Callable[[dict[str, float]], dict[str, float]]


def gaussian_nll(x: tf.Tensor, mean: tf.Tensor, log_sigma: tf.Tensor) -> tf.Tensor:
    """−ln N(x; mean, σ²) per element, with ln σ clipped to [LOG_SIGMA_MIN, −LOG_SIGMA_MIN]."""
    log_sigma = tf.clip_by_value(log_sigma, LOG_SIGMA_MIN, -LOG_SIGMA_MIN)
    return 0.5 * tf.square((x - mean) * tf.exp(-log_sigma)) + log_sigma + 0.5 * LOG_2PI


def bernoulli_nll(x: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """−ln Bernoulli(x; sigmoid(logits)) per element (x in [0, 1])."""
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits)


def gaussian_rate(mean: tf.Tensor, log_var: tf.Tensor) -> tf.Tensor:
    """KL(N(mean, e^log_var) ‖ N(0, I)) per example, in nats."""
    return 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_var) - 1.0 - log_var, axis=1)


def feature_axes(x: tf.Tensor) -> list[int]:
    return list(range(1, len(x.shape)))


class _Coder:
    """What both objectives are made of: an encoder trunk, the objective's latent heads and a
    decoder of the params' layers (dense or convolutional by `params.architecture`); `output`
    is the decoder's activation. Built in that order, which fixes the layers' initial weights."""

    def __init__(self, params: Any, input_shape: tuple[int, ...], output: str | None) -> None:
        self.params = params
        self.input_shape = input_shape
        self.conv = use_conv(params.architecture, input_shape)
        layers = (input_shape, params.hidden, params.activation, self.conv)
        self.trunk = encoder_trunk(*layers)
        self.make_heads()
        self.decoder = decoder_stack(*layers, output)

    def make_heads(self) -> None:
        raise NotImplementedError


class AutoencoderObjective(_Coder):
    """Reconstruction loss as Keras computes it: a mean over features, per example."""

    energy_units = "mean over features"
    score_name = "standardized_reconstruction_error"

    def __init__(self, params: Any, input_shape: tuple[int, ...]) -> None:
        self.bce = params.resolved_loss == "binary_crossentropy"
        # With cross-entropy the decoder emits logits; serving applies the sigmoid.
        super().__init__(
            params, input_shape, None if self.bce else params.resolved_output_activation
        )
        self.output_sigmoid = self.bce or params.resolved_output_activation == "sigmoid"
        self.saved_variables: dict[str, tf.Variable] = {}
        dummy = tf.zeros((1, *input_shape))
        self.decoder(self.head(self.trunk(dummy)))

    def make_heads(self) -> None:
        self.head = keras.layers.Dense(self.params.latent_dim, name="latent", dtype=OUTPUT_DTYPE)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return [
            *self.trunk.trainable_variables,
            *self.head.trainable_variables,
            *self.decoder.trainable_variables,
        ]

    def _forward(self, x: tf.Tensor, seed: tf.Tensor | None) -> tf.Tensor:
        p = self.params
        h = x
        if seed is not None and p.noise_std > 0:
            h = h + p.noise_std * tf.random.stateless_normal(tf.shape(h), seed, dtype=h.dtype)
        dropout = p.dropout if seed is not None else 0.0
        z = self.head(self.trunk(h, dropout=dropout, seed=seed))
        return self.decoder(z, dropout=dropout, seed=None if seed is None else seed + 1)

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        out = self._forward(x, seed if training else None)
        if self.bce:
            return tf.reduce_mean(bernoulli_nll(x, out), axis=feature_axes(x)), {}
        return tf.reduce_mean(tf.square(x - out), axis=feature_axes(x)), {}

    def output(self, x: tf.Tensor) -> tf.Tensor:
        """The decoder's output for `x` (logits with cross-entropy)."""
        return self._forward(x, None)

    def reconstruct(self, x: tf.Tensor) -> tf.Tensor:
        out = self.output(x)
        return tf.sigmoid(out) if self.bce else out

    def extra_metrics(self, scaler: Scaler) -> ExtraMetrics | None:
        """Telemetry beyond the trainer's own, for data preprocessed by `scaler`: none."""
        return None

    def scorer(self, normal: np.ndarray) -> tuple[ScoreFn, dict[str, np.ndarray]]:
        """The anomaly score, and the arrays serving needs to repeat it: the residual variance
        on the `normal` rows the model trained on."""
        return reconstruction_scorer(self.reconstruct, normal)

    def models(self) -> dict[str, keras.Model]:
        encoder = as_model(Stack([*self.trunk.layers, self.head]), self.input_shape, "encoder")
        decoder = as_model(self.decoder, (self.params.latent_dim,), "decoder")
        return {"encoder": encoder, "decoder": decoder}


class AutoencoderEnsemble:
    """`params.ensemble_size` autoencoders of the params' layers trained side by side on the
    same batches, each from initial weights of its own (drawn one after another from the job's
    seed, the first as a lone network's). The training loss is the sum of theirs, so each
    network trains as it would alone, weight decay included; a row's reconstruction is the mean
    of theirs, and the anomaly score that mean's standardised error (a seed ensemble: on small
    training sets one network's score varies with its initial weights)."""

    energy_units = "sum over the networks of the mean over features"
    score_name = AutoencoderObjective.score_name

    def __init__(self, params: Any, input_shape: tuple[int, ...]) -> None:
        self.params = params
        self.input_shape = input_shape
        self.networks = [
            AutoencoderObjective(params, input_shape) for _ in range(params.ensemble_size)
        ]
        self.bce = self.networks[0].bce
        self.output_sigmoid = self.networks[0].output_sigmoid
        self.saved_variables: dict[str, tf.Variable] = {}

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return [v for network in self.networks for v in network.trainable_variables]

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        # Noise and dropout seeds of each network's own (a lone network uses seed and seed + 1).
        losses = [
            network.per_example_loss(x, seed + 2 * i, training)[0]
            for i, network in enumerate(self.networks)
        ]
        return tf.add_n(losses), {}

    def reconstruct(self, x: tf.Tensor) -> tf.Tensor:
        # With cross-entropy the networks emit logits: their mean goes through the sigmoid, as
        # serving does with the saved decoder's output.
        out = tf.add_n([n.output(x) for n in self.networks]) / len(self.networks)
        return tf.sigmoid(out) if self.bce else out

    def extra_metrics(self, scaler: Scaler) -> ExtraMetrics | None:
        """Telemetry beyond the trainer's own: none."""
        return None

    def scorer(self, normal: np.ndarray) -> tuple[ScoreFn, dict[str, np.ndarray]]:
        """As a lone network's, on the mean reconstruction."""
        return reconstruction_scorer(self.reconstruct, normal)

    def models(self) -> dict[str, keras.Model]:
        """An encoder to the networks' latents side by side, and a decoder from them to the
        mean of the networks' outputs: plain Keras models (each network's as a sub-model),
        served as a lone network's."""
        latent, parts = self.params.latent_dim, [n.models() for n in self.networks]
        for i, part in enumerate(parts):
            for model in part.values():
                model.name = f"{model.name}_{i}"
        rows = keras.Input(shape=self.input_shape, name="encoder_input")
        codes = [part["encoder"](rows) for part in parts]
        encoder = keras.Model(rows, keras.layers.Concatenate()(codes), name="encoder")
        z = keras.Input(shape=(latent * len(parts),), name="decoder_input")
        outs = [p["decoder"](z[:, i * latent : (i + 1) * latent]) for i, p in enumerate(parts)]
        decoder = keras.Model(z, keras.layers.Average()(outs), name="decoder")
        return {"encoder": encoder, "decoder": decoder}


class VaeObjective(_Coder):
    """Negative ELBO per example (nats): distortion + β·rate (Alemi et al. 2018)."""

    energy_units = "nats per example (−ELBO)"
    score_name = "negative_elbo"

    def __init__(self, params: Any, input_shape: tuple[int, ...]) -> None:
        super().__init__(params, input_shape, None)
        self.dims = int(np.prod(input_shape))
        self.bernoulli = params.likelihood == "bernoulli"
        self.output_sigmoid = self.bernoulli
        # Gaussian likelihood: one learned log σ per data dimension.
        self.log_sigma = tf.Variable(tf.zeros(input_shape), name="log_sigma")
        self.saved_variables = {"log_sigma": self.log_sigma}
        h = self.trunk(tf.zeros((1, *input_shape)))
        self.logvar_head(h)
        self.decoder(self.mean_head(h))
        self.log_jacobian = 0.0  # Σ ln|scale| of the preprocessing, for bits/dim in data units

    def make_heads(self) -> None:
        latent = self.params.latent_dim
        self.mean_head = keras.layers.Dense(latent, name="z_mean", dtype=OUTPUT_DTYPE)
        self.logvar_head = keras.layers.Dense(latent, name="z_log_var", dtype=OUTPUT_DTYPE)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        own = [] if self.bernoulli else [self.log_sigma]
        return [
            *self.trunk.trainable_variables,
            *self.mean_head.trainable_variables,
            *self.logvar_head.trainable_variables,
            *self.decoder.trainable_variables,
            *own,
        ]

    def encode(self, x: tf.Tensor, seed: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        dropout = self.params.dropout if seed is not None else 0.0
        h = self.trunk(x, dropout=dropout, seed=seed)
        return self.mean_head(h), tf.clip_by_value(self.logvar_head(h), -20.0, 20.0)

    def terms(self, x: tf.Tensor, seed: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Per-example distortion, rate, and the decoder's output for z (sampled or the mean)."""
        mean, log_var = self.encode(x, seed)
        if seed is None:
            z = mean
        else:
            eps = tf.random.stateless_normal(tf.shape(mean), seed + 2, dtype=mean.dtype)
            z = mean + tf.exp(0.5 * log_var) * eps
        dropout = self.params.dropout if seed is not None else 0.0
        out = self.decoder(z, dropout=dropout, seed=None if seed is None else seed + 3)
        nll = bernoulli_nll(x, out) if self.bernoulli else gaussian_nll(x, out, self.log_sigma)
        distortion = tf.reduce_sum(nll, axis=feature_axes(x))
        return distortion, gaussian_rate(mean, log_var), out

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        distortion, rate, _ = self.terms(x, seed)
        loss = distortion + self.params.beta * rate
        return loss, {"distortion": distortion, "rate": rate}

    def score(self, x: tf.Tensor) -> tf.Tensor:
        """−ELBO at z = mean: deterministic, so the same row always gets the same score."""
        distortion, rate, _ = self.terms(x, None)
        return distortion + rate

    def reconstruct(self, x: tf.Tensor) -> tf.Tensor:
        out = self.terms(x, None)[2]
        return tf.sigmoid(out) if self.bernoulli else out

    def extra_metrics(self, scaler: Scaler) -> ExtraMetrics:
        """The free energy's parts, with bits/dim in the units of the data `scaler` scaled."""
        self.log_jacobian = scaler.log_abs_det_jacobian()
        return self.vae_metrics

    def vae_metrics(self, extras: dict[str, float]) -> dict[str, float]:
        """The variational free energy's parts, from window means of distortion and rate."""
        distortion, rate = extras.get("distortion", math.nan), extras.get("rate", math.nan)
        free_energy = distortion + rate
        return {
            "distortion": distortion,
            "rate": rate,
            "elbo": -free_energy,
            "bits_per_dim": (free_energy + self.log_jacobian) / (self.dims * math.log(2)),
        }

    def scorer(self, normal: np.ndarray) -> tuple[ScoreFn, dict[str, np.ndarray]]:
        """The −ELBO, and the Gaussian decoder's log σ that serving needs to repeat it."""
        extras = {} if self.bernoulli else {"log_sigma": self.log_sigma.numpy()}
        return self.score, extras

    def models(self) -> dict[str, keras.Model]:
        encoder = with_heads(
            self.trunk, [self.mean_head, self.logvar_head], self.input_shape, "encoder"
        )
        decoder = as_model(self.decoder, (self.params.latent_dim,), "decoder")
        return {"encoder": encoder, "decoder": decoder}


def save_weights(objective: Any, folder: Path) -> None:
    for name, model in objective.models().items():
        model.save_weights(folder / f"{name}.weights.h5")
    for name, variable in objective.saved_variables.items():
        np.save(folder / f"{name}.npy", variable.numpy())


def load_weights(objective: Any, folder: Path) -> None:
    for name, model in objective.models().items():
        model.load_weights(folder / f"{name}.weights.h5")
    for name, variable in objective.saved_variables.items():
        variable.assign(np.load(folder / f"{name}.npy", allow_pickle=False))


def batched(fn: Any, x: np.ndarray, size: int = 2048) -> np.ndarray:
    parts = [np.asarray(fn(tf.constant(x[i : i + size]))) for i in range(0, len(x), size)]
    return np.concatenate(parts) if parts else np.zeros((0,))


def residual_variance(reconstruct: ScoreFn, x: np.ndarray) -> np.ndarray:
    """Per-feature variance of the reconstruction residual on held-out normal rows."""
    residual = x - batched(reconstruct, x)
    return np.maximum(residual.var(axis=0), VARIANCE_FLOOR).astype(np.float32)


def reconstruction_scorer(
    reconstruct: ScoreFn, normal: np.ndarray
) -> tuple[ScoreFn, dict[str, np.ndarray]]:
    """The standardised reconstruction error, and the residual variance on the `normal` rows
    that serving needs to repeat it."""
    variance = residual_variance(reconstruct, normal)

    def score(x: tf.Tensor) -> tf.Tensor:
        return standardized_error(x, reconstruct(x), variance)

    return score, {"residual_variance": variance}


def standardized_error(x: tf.Tensor, reconstruction: tf.Tensor, variance: tf.Tensor) -> tf.Tensor:
    """Mean over features of residual² / its held-out variance: a diagonal-Gaussian NLL, so a
    feature that is always reconstructed well counts more when it is not."""
    return tf.reduce_mean(tf.square(x - reconstruction) / variance, axis=feature_axes(x))


def save_artifacts(objective: Any, folder: Path, extras: dict[str, np.ndarray]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, model in objective.models().items():
        path = folder / f"{name}.keras"
        model.save(path)
        files[name] = path
    path = folder / "scoring.npz"
    np.savez(path, **extras)
    files["scoring"] = path
    return files
