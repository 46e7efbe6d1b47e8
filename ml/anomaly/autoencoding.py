"""Autoencoders and VAEs: objectives, scoring and the serving side (TensorFlow inside).

Imported only by `ml/kinds/autoencoder.py` and `ml/kinds/vae.py` inside their `run` and
`load`, so TensorFlow never loads where the kinds' specs are merely validated.
"""

from __future__ import annotations

import math
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
from ml.core.serving import UnsupportedOperation

LOG_2PI = math.log(2 * math.pi)
VARIANCE_FLOOR = 1e-6
# σ of a Gaussian decoder stays above e^-3 ≈ 0.05 (in scaled units): a feature that is constant in
# the training data (an image's border pixels) would otherwise drive σ to 0 and its density to ∞.
LOG_SIGMA_MIN = -3.0


class AutoencoderObjective:
    """Reconstruction loss as Keras computes it: a mean over features, per example."""

    def __init__(self, params: Any, input_shape: tuple[int, ...]) -> None:
        self.params = params
        self.input_shape = input_shape
        self.conv = use_conv(params.architecture, input_shape)
        self.bce = params.resolved_loss == "binary_crossentropy"
        self.trunk = encoder_trunk(input_shape, params.hidden, params.activation, self.conv)
        self.head = keras.layers.Dense(params.latent_dim, name="latent", dtype=OUTPUT_DTYPE)
        # With cross-entropy the decoder emits logits; serving applies the sigmoid.
        out = None if self.bce else params.resolved_output_activation
        self.decoder = decoder_stack(input_shape, params.hidden, params.activation, self.conv, out)
        self.output_sigmoid = self.bce or params.resolved_output_activation == "sigmoid"
        dummy = tf.zeros((1, *input_shape))
        self.decoder(self.head(self.trunk(dummy)))

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
        axes = list(range(1, len(x.shape)))
        if self.bce:
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=out)
            return tf.reduce_mean(bce, axis=axes), {}
        return tf.reduce_mean(tf.square(x - out), axis=axes), {}

    def reconstruct(self, x: tf.Tensor) -> tf.Tensor:
        out = self._forward(x, None)
        return tf.sigmoid(out) if self.bce else out

    def models(self) -> dict[str, keras.Model]:
        encoder = as_model(Stack([*self.trunk.layers, self.head]), self.input_shape, "encoder")
        decoder = as_model(self.decoder, (self.params.latent_dim,), "decoder")
        return {"encoder": encoder, "decoder": decoder}


class VaeObjective:
    """Negative ELBO per example (nats): distortion + β·rate (Alemi et al. 2018)."""

    def __init__(self, params: Any, input_shape: tuple[int, ...]) -> None:
        self.params = params
        self.input_shape = input_shape
        self.dims = int(np.prod(input_shape))
        self.conv = use_conv(params.architecture, input_shape)
        self.bernoulli = params.likelihood == "bernoulli"
        self.trunk = encoder_trunk(input_shape, params.hidden, params.activation, self.conv)
        self.mean_head = keras.layers.Dense(params.latent_dim, name="z_mean", dtype=OUTPUT_DTYPE)
        self.logvar_head = keras.layers.Dense(
            params.latent_dim, name="z_log_var", dtype=OUTPUT_DTYPE
        )
        self.decoder = decoder_stack(input_shape, params.hidden, params.activation, self.conv, None)
        # Gaussian likelihood: one learned log σ per data dimension.
        self.log_sigma = tf.Variable(tf.zeros(input_shape), name="log_sigma")
        h = self.trunk(tf.zeros((1, *input_shape)))
        self.logvar_head(h)
        self.decoder(self.mean_head(h))
        self.log_jacobian = 0.0  # Σ ln|scale| of the preprocessing, for bits/dim in data units

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
        axes = list(range(1, len(x.shape)))
        if self.bernoulli:
            nll = tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=out)
        else:
            log_sigma = tf.clip_by_value(self.log_sigma, LOG_SIGMA_MIN, -LOG_SIGMA_MIN)
            nll = 0.5 * tf.square((x - out) * tf.exp(-log_sigma)) + log_sigma + 0.5 * LOG_2PI
        distortion = tf.reduce_sum(nll, axis=axes)
        rate = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_var) - 1.0 - log_var, axis=1)
        return distortion, rate, out

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

    def models(self) -> dict[str, keras.Model]:
        encoder = with_heads(
            self.trunk, [self.mean_head, self.logvar_head], self.input_shape, "encoder"
        )
        decoder = as_model(self.decoder, (self.params.latent_dim,), "decoder")
        return {"encoder": encoder, "decoder": decoder}


def save_weights(objective: Any, folder: Path) -> None:
    for name, model in objective.models().items():
        model.save_weights(folder / f"{name}.weights.h5")
    if isinstance(objective, VaeObjective):
        np.save(folder / "log_sigma.npy", objective.log_sigma.numpy())


def load_weights(objective: Any, folder: Path) -> None:
    for name, model in objective.models().items():
        model.load_weights(folder / f"{name}.weights.h5")
    if isinstance(objective, VaeObjective):
        objective.log_sigma.assign(np.load(folder / "log_sigma.npy", allow_pickle=False))


def batched(fn: Any, x: np.ndarray, size: int = 2048) -> np.ndarray:
    parts = [np.asarray(fn(tf.constant(x[i : i + size]))) for i in range(0, len(x), size)]
    return np.concatenate(parts) if parts else np.zeros((0,))


def residual_variance(objective: AutoencoderObjective, x: np.ndarray) -> np.ndarray:
    """Per-feature variance of the reconstruction residual on held-out normal rows."""
    residual = x - batched(objective.reconstruct, x)
    return np.maximum(residual.var(axis=0), VARIANCE_FLOOR).astype(np.float32)


def standardized_error(x: tf.Tensor, reconstruction: tf.Tensor, variance: tf.Tensor) -> tf.Tensor:
    """Mean over features of residual² / its held-out variance: a diagonal-Gaussian NLL, so a
    feature that is always reconstructed well counts more when it is not."""
    axes = list(range(1, len(x.shape)))
    return tf.reduce_mean(tf.square(x - reconstruction) / variance, axis=axes)


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


# --- serving --------------------------------------------------------------------------------


class AutoencodingServable:
    """encode / reconstruct / score of a saved autoencoder or VAE, compiled once per operation."""

    def __init__(self, kind: str, files: dict[str, Path], meta: dict[str, Any]) -> None:
        from ml.core.preprocessing import Scaler

        self.kind = kind
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.scaler = Scaler.from_dict(meta.get("preprocessing") or {"scale": "none"})
        calibration = meta.get("calibration") or {}
        self.threshold = float(calibration.get("threshold", math.inf))
        self.output_sigmoid = bool(calibration.get("output_sigmoid", False))
        self.operations = list(meta.get("capabilities") or ["encode", "reconstruct", "score"])
        load = keras.models.load_model
        self.encoder = load(files["encoder"], compile=False, safe_mode=True)
        self.decoder = load(files["decoder"], compile=False, safe_mode=True)
        with np.load(files["scoring"], allow_pickle=False) as scoring:
            self.scoring = {k: tf.constant(scoring[k]) for k in scoring.files}
        spec = [tf.TensorSpec((None, *self.input_shape), tf.float32)]
        self.latent_dim = int(self.decoder.input_shape[-1])
        latent_spec = [tf.TensorSpec((None, self.latent_dim), tf.float32)]
        self._generate = tf.function(self._decode, input_signature=latent_spec)
        self._encode = tf.function(self._encode_fn, input_signature=spec)
        self._reconstruct = tf.function(self._reconstruct_fn, input_signature=spec)
        self._score = tf.function(self._score_fn, input_signature=spec)

    def _latent(self, x: tf.Tensor) -> Any:
        return self.encoder(x, training=False)

    def _decode(self, z: tf.Tensor) -> tf.Tensor:
        out = self.decoder(z, training=False)
        return tf.sigmoid(out) if self.output_sigmoid else out

    def generate(self, n: int, seed: int | None) -> dict[str, Any]:
        """Decode z ~ N(0, I): the decoder's mean (Gaussian) or probabilities (Bernoulli)."""
        z = np.random.default_rng(seed).standard_normal((n, self.latent_dim)).astype(np.float32)
        out = self._generate(tf.constant(z)).numpy()
        return {"samples": self.scaler.inverse_transform(out)}

    def _encode_fn(self, x: tf.Tensor) -> Any:
        return self._latent(x)

    def _reconstruct_fn(self, x: tf.Tensor) -> tf.Tensor:
        latent = self._latent(x)
        mean = latent[0] if self.kind == "vae" else latent
        return self._decode(mean)

    def _score_fn(self, x: tf.Tensor) -> tf.Tensor:
        if self.kind != "vae":
            return standardized_error(x, self._reconstruct_fn(x), self.scoring["residual_variance"])
        mean, log_var = self._latent(x)
        out = self.decoder(mean, training=False)
        axes = list(range(1, len(x.shape)))
        if "log_sigma" in self.scoring:
            log_sigma = tf.clip_by_value(self.scoring["log_sigma"], LOG_SIGMA_MIN, -LOG_SIGMA_MIN)
            nll = 0.5 * tf.square((x - out) * tf.exp(-log_sigma)) + log_sigma + 0.5 * LOG_2PI
        else:
            nll = tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=out)
        rate = 0.5 * tf.reduce_sum(tf.square(mean) + tf.exp(log_var) - 1.0 - log_var, axis=1)
        return tf.reduce_sum(nll, axis=axes) + rate

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation not in self.operations:
            raise UnsupportedOperation(operation, self.operations)
        if operation == "generate":
            return self.generate(int(options.get("n", 16)), options.get("seed"))
        assert inputs is not None
        x = tf.constant(self.scaler.transform(inputs).astype(np.float32, copy=False))
        if operation == "encode":
            latent = self._encode(x)
            if self.kind == "vae":
                return {"latents": latent[0].numpy(), "log_variances": latent[1].numpy()}
            return {"latents": latent.numpy()}
        if operation == "reconstruct":
            out = self._reconstruct(x).numpy()
            return {"reconstructions": self.scaler.inverse_transform(out)}
        scores = self._score(x).numpy()
        return {
            "scores": scores,
            "threshold": self.threshold,
            "is_anomaly": scores > self.threshold,
        }
