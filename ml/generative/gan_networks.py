"""The networks of the `gan` kind (TensorFlow), built functionally and named: the seed
article's dense generator and discriminator, and a small DCGAN pair for images. The
discriminator emits a logit (the losses use the numerically stable logit forms)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.core.networks import CONV_DOWNSAMPLE

SLOPE = 0.2  # LeakyReLU


def dense_generator(
    latent: int,
    hidden: Sequence[int],
    shape: Sequence[int],
    momentum: float | None,
    out: str | None,
) -> keras.Model:
    """The seed's generator: Dense → LeakyReLU(0.2) → BatchNorm per layer, then the output
    (without batch norm when `momentum` is None)."""
    z = keras.Input(shape=(latent,), name="z")
    h = z
    for width in hidden:
        h = keras.layers.Dense(width)(h)
        h = keras.layers.LeakyReLU(negative_slope=SLOPE)(h)
        if momentum is not None:
            h = keras.layers.BatchNormalization(momentum=momentum)(h)
    h = keras.layers.Dense(int(np.prod(shape)), activation=out, name="sample")(h)
    if len(shape) > 1:
        h = keras.layers.Reshape(tuple(shape))(h)
    return keras.Model(z, h, name="generator")


def dense_discriminator(
    shape: Sequence[int], hidden: Sequence[int], spectral: bool = False
) -> keras.Model:
    """The seed's discriminator (512-256, LeakyReLU 0.2); it emits a logit. `spectral`: every
    dense layer spectrally normalised."""
    layer = SpectralDense if spectral else keras.layers.Dense
    x = keras.Input(shape=tuple(shape), name="x")
    h = keras.layers.Flatten()(x) if len(shape) > 1 else x
    for width in hidden:
        h = keras.layers.LeakyReLU(negative_slope=SLOPE)(layer(width)(h))
    return keras.Model(x, layer(1, name="logit")(h), name="discriminator")


def conv_generator(
    latent: int, shape: Sequence[int], momentum: float, out: str | None, filters: int = 32
) -> keras.Model:
    """A small DCGAN generator: project, then two stride-2 transposed convolutions."""
    height, width, channels = (int(s) for s in shape)
    small = (height // CONV_DOWNSAMPLE, width // CONV_DOWNSAMPLE, 4 * filters)
    z = keras.Input(shape=(latent,), name="z")
    h = keras.layers.Dense(small[0] * small[1] * small[2])(z)
    h = keras.layers.BatchNormalization(momentum=momentum)(h)
    h = keras.layers.LeakyReLU(negative_slope=SLOPE)(h)
    h = keras.layers.Reshape(small)(h)
    for f in (2 * filters, filters):
        h = keras.layers.Conv2DTranspose(f, 4, strides=2, padding="same")(h)
        h = keras.layers.BatchNormalization(momentum=momentum)(h)
        h = keras.layers.LeakyReLU(negative_slope=SLOPE)(h)
    h = keras.layers.Conv2D(channels, 3, padding="same", activation=out, name="sample")(h)
    return keras.Model(z, h, name="generator")


def conv_discriminator(
    shape: Sequence[int], filters: int = 32, spectral: bool = False
) -> keras.Model:
    x = keras.Input(shape=tuple(shape), name="x")
    h = x
    for f in (filters, 2 * filters):
        if spectral:
            h = SpectralConv2D(f)(h)
        else:
            h = keras.layers.Conv2D(f, 4, strides=2, padding="same")(h)
        h = keras.layers.LeakyReLU(negative_slope=SLOPE)(h)
    h = keras.layers.Flatten()(h)
    logit = (SpectralDense if spectral else keras.layers.Dense)(1, name="logit")(h)
    return keras.Model(x, logit, name="discriminator")


# --- spectral normalisation (Miyato et al. 2018) -----------------------------------------------


def spectral_normalized(kernel: tf.Tensor, u: tf.Variable, training: bool) -> tf.Tensor:
    """`kernel / σ`, σ its largest singular value (as a matrix of shape (-1, outputs)), from one
    power iteration continuing `u`'s; the gradient flows through σ, not through u and v."""
    w = tf.reshape(kernel, (-1, kernel.shape[-1]))
    v = tf.math.l2_normalize(tf.matmul(u, w, transpose_b=True))
    u_new = tf.stop_gradient(tf.math.l2_normalize(tf.matmul(v, w)))
    v = tf.stop_gradient(v)
    sigma = tf.reduce_sum(tf.matmul(v, w) * u_new)
    if training:
        u.assign(u_new)
    return kernel / sigma


class _Spectral(keras.layers.Layer):
    """A layer whose kernel is divided by its spectral norm on every call."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units

    def _weights(self, kernel_shape: tuple[int, ...]) -> None:
        self.kernel = self.add_weight(
            shape=kernel_shape, initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")
        self.u = self.add_weight(
            shape=(1, self.units),
            initializer=keras.initializers.RandomNormal(seed=0),
            trainable=False,
            name="u",
        )

    def normalized_kernel(self, training: bool = False) -> tf.Tensor:
        return spectral_normalized(self.kernel, self.u, training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


class SpectralDense(_Spectral):
    def build(self, input_shape: tuple[int, ...]) -> None:
        self._weights((int(input_shape[-1]), self.units))

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return tf.matmul(x, self.normalized_kernel(training)) + self.bias


class SpectralConv2D(_Spectral):
    """A 4x4 stride-2 'same' convolution (the DCGAN discriminator's) with spectral norm."""

    def build(self, input_shape: tuple[int, ...]) -> None:
        self._weights((4, 4, int(input_shape[-1]), self.units))

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        kernel = self.normalized_kernel(training)
        return tf.nn.conv2d(x, kernel, strides=2, padding="SAME") + self.bias
