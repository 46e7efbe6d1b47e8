"""Serving a saved autoencoder or VAE: encode, reconstruct, score and (VAE) generate, each
compiled once (TensorFlow inside; the kinds name these classes as their `servable`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.anomaly.autoencoding import (
    bernoulli_nll,
    feature_axes,
    gaussian_nll,
    gaussian_rate,
    standardized_error,
)
from ml.core.preprocessing import Scaler
from ml.core.serving import UnsupportedOperation, calibrated_threshold, score_answer


class AutoencodingServable:
    """What the autoencoder and the VAE serve alike; subclasses say how a latent reads and how
    a row is scored."""

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.scaler = Scaler.from_dict(meta.get("preprocessing") or {"scale": "none"})
        calibration = meta.get("calibration") or {}
        self.threshold = calibrated_threshold(meta)
        self.output_sigmoid = bool(calibration.get("output_sigmoid", False))
        self.operations = list(meta.get("capabilities") or ["encode", "reconstruct", "score"])
        load = keras.models.load_model
        self.encoder = load(files["encoder"], compile=False, safe_mode=True)
        self.decoder = load(files["decoder"], compile=False, safe_mode=True)
        with np.load(files["scoring"], allow_pickle=False) as scoring:
            self.scoring = {k: tf.constant(scoring[k]) for k in scoring.files}
        spec = [tf.TensorSpec((None, *self.input_shape), tf.float32)]
        self.latent_dim = int(self.decoder.input_shape[-1])
        self._encode = tf.function(self._latent, input_signature=spec)
        self._reconstruct = tf.function(self._reconstruct_fn, input_signature=spec)
        self._score = tf.function(self._score_fn, input_signature=spec)

    def _latent(self, x: tf.Tensor) -> Any:
        return self.encoder(x, training=False)

    def _mean(self, latent: Any) -> tf.Tensor:
        """The point in latent space a row decodes from."""
        return latent

    def _decode(self, z: tf.Tensor) -> tf.Tensor:
        out = self.decoder(z, training=False)
        return tf.sigmoid(out) if self.output_sigmoid else out

    def _reconstruct_fn(self, x: tf.Tensor) -> tf.Tensor:
        return self._decode(self._mean(self._latent(x)))

    def _score_fn(self, x: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def encoded(self, latent: Any) -> dict[str, np.ndarray]:
        return {"latents": latent.numpy()}

    def generate(self, n: int, seed: int | None) -> dict[str, Any]:
        raise UnsupportedOperation("generate", self.operations)

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation not in self.operations:
            raise UnsupportedOperation(operation, self.operations)
        if operation == "generate":
            return self.generate(int(options.get("n", 16)), options.get("seed"))
        assert inputs is not None
        x = tf.constant(self.scaler.transform(inputs).astype(np.float32, copy=False))
        if operation == "encode":
            return self.encoded(self._encode(x))
        if operation == "reconstruct":
            out = self._reconstruct(x).numpy()
            return {"reconstructions": self.scaler.inverse_transform(out)}
        scores = self._score(x).numpy()
        return score_answer(scores, self.threshold)


class AutoencoderServable(AutoencodingServable):
    """Scores a row by its reconstruction error, standardised by the held-out residual variance."""

    def _score_fn(self, x: tf.Tensor) -> tf.Tensor:
        return standardized_error(x, self._reconstruct_fn(x), self.scoring["residual_variance"])


class VaeServable(AutoencodingServable):
    """Encodes to a mean and log-variance, scores a row by its −ELBO, samples from the prior."""

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        super().__init__(files, meta)
        latent_spec = [tf.TensorSpec((None, self.latent_dim), tf.float32)]
        self._generate = tf.function(self._decode, input_signature=latent_spec)

    def _mean(self, latent: Any) -> tf.Tensor:
        return latent[0]

    def _score_fn(self, x: tf.Tensor) -> tf.Tensor:
        mean, log_var = self._latent(x)
        out = self.decoder(mean, training=False)
        if "log_sigma" in self.scoring:
            nll = gaussian_nll(x, out, self.scoring["log_sigma"])
        else:
            nll = bernoulli_nll(x, out)
        return tf.reduce_sum(nll, axis=feature_axes(x)) + gaussian_rate(mean, log_var)

    def encoded(self, latent: Any) -> dict[str, np.ndarray]:
        return {"latents": latent[0].numpy(), "log_variances": latent[1].numpy()}

    def generate(self, n: int, seed: int | None) -> dict[str, Any]:
        """Decode z ~ N(0, I): the decoder's mean (Gaussian) or probabilities (Bernoulli)."""
        z = np.random.default_rng(seed).standard_normal((n, self.latent_dim)).astype(np.float32)
        out = self._generate(tf.constant(z)).numpy()
        return {"samples": self.scaler.inverse_transform(out)}
