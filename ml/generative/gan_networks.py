"""The networks of the `gan` kind (TensorFlow), built functionally and named: the seed
article's dense generator and discriminator, and a small DCGAN pair for images. The
discriminator emits a logit (the losses use the numerically stable logit forms)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from ml.core.networks import CONV_DOWNSAMPLE

SLOPE = 0.2  # LeakyReLU


def dense_generator(
    latent: int, hidden: Sequence[int], shape: Sequence[int], momentum: float, out: str | None
) -> keras.Model:
    """The seed's generator: Dense → LeakyReLU(0.2) → BatchNorm per layer, then the output."""
    z = keras.Input(shape=(latent,), name="z")
    h = z
    for width in hidden:
        h = keras.layers.Dense(width)(h)
        h = keras.layers.LeakyReLU(negative_slope=SLOPE)(h)
        h = keras.layers.BatchNormalization(momentum=momentum)(h)
    h = keras.layers.Dense(int(np.prod(shape)), activation=out, name="sample")(h)
    if len(shape) > 1:
        h = keras.layers.Reshape(tuple(shape))(h)
    return keras.Model(z, h, name="generator")


def dense_discriminator(shape: Sequence[int], hidden: Sequence[int]) -> keras.Model:
    """The seed's discriminator (512-256, LeakyReLU 0.2); it emits a logit."""
    x = keras.Input(shape=tuple(shape), name="x")
    h = keras.layers.Flatten()(x) if len(shape) > 1 else x
    for width in hidden:
        h = keras.layers.LeakyReLU(negative_slope=SLOPE)(keras.layers.Dense(width)(h))
    return keras.Model(x, keras.layers.Dense(1, name="logit")(h), name="discriminator")


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


def conv_discriminator(shape: Sequence[int], filters: int = 32) -> keras.Model:
    x = keras.Input(shape=tuple(shape), name="x")
    h = x
    for f in (filters, 2 * filters):
        h = keras.layers.Conv2D(f, 4, strides=2, padding="same")(h)
        h = keras.layers.LeakyReLU(negative_slope=SLOPE)(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(x, keras.layers.Dense(1, name="logit")(h), name="discriminator")
