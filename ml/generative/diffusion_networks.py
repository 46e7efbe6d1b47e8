"""The ε-networks of the `diffusion` kind (TensorFlow): a residual MLP with a sinusoidal time
embedding for feature vectors, a small U-Net for images. Built functionally from built-in Keras
layers only, so saved models load with `safe_mode=True`; the embedding of t is computed outside
the network (`time_embedding`), which takes x_t and the embedding as its two inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.core.networks import OUTPUT_DTYPE, use_conv


def time_embedding(t: tf.Tensor, dim: int, timesteps: int) -> tf.Tensor:
    """Sinusoidal embedding of t (rescaled to 0..1000 whatever T is), shape [batch, dim]."""
    half = dim // 2
    scaled = tf.cast(t, tf.float32) * (1000.0 / timesteps)
    freqs = tf.exp(-math.log(10_000.0) * tf.range(half, dtype=tf.float32) / half)
    args = scaled[:, None] * freqs[None, :]
    emb = tf.concat([tf.sin(args), tf.cos(args)], axis=1)
    if dim % 2:
        emb = tf.pad(emb, [[0, 0], [0, 1]])
    return emb


def _mlp(input_shape: Sequence[int], hidden: Sequence[int], emb_dim: int) -> keras.Model:
    size = int(np.prod(input_shape))
    x_in = keras.Input(shape=tuple(input_shape), name="x_t")
    e_in = keras.Input(shape=(emb_dim,), name="t_embedding")
    h = keras.layers.Flatten()(x_in) if len(input_shape) > 1 else x_in
    e = keras.layers.Dense(hidden[0], activation="silu", name="time_mlp")(e_in)
    h = keras.layers.Dense(hidden[0], name="input_projection")(h)
    for i, width in enumerate(hidden):
        z = keras.layers.Add()([keras.layers.Dense(width)(h), keras.layers.Dense(width)(e)])
        z = keras.layers.Activation("silu")(z)
        h = keras.layers.Add(name=f"residual_{i}")([h, z]) if int(h.shape[-1]) == width else z
    out = keras.layers.Dense(size, name="eps", dtype=OUTPUT_DTYPE)(h)
    if len(input_shape) > 1:
        out = keras.layers.Reshape(tuple(input_shape), dtype=OUTPUT_DTYPE)(out)
    return keras.Model([x_in, e_in], out, name="eps_mlp")


def _groups(channels: int) -> int:
    return 8 if channels % 8 == 0 else 1


def _res_block(h: Any, e: Any, channels: int) -> Any:
    skip = h if int(h.shape[-1]) == channels else keras.layers.Conv2D(channels, 1)(h)
    z = keras.layers.GroupNormalization(_groups(int(h.shape[-1])))(h)
    z = keras.layers.Activation("silu")(z)
    z = keras.layers.Conv2D(channels, 3, padding="same")(z)
    shift = keras.layers.Reshape((1, 1, channels))(keras.layers.Dense(channels)(e))
    z = keras.layers.Add()([z, shift])
    z = keras.layers.GroupNormalization(_groups(channels))(z)
    z = keras.layers.Activation("silu")(z)
    z = keras.layers.Conv2D(channels, 3, padding="same")(z)
    return keras.layers.Add()([skip, z])


def _unet(input_shape: Sequence[int], channels: Sequence[int], emb_dim: int) -> keras.Model:
    """A small U-Net: one residual block per level, stride-2 down, nearest-neighbour up."""
    h_dim, w_dim, c = (int(s) for s in input_shape)
    levels = len(channels)
    if h_dim % 2 ** (levels - 1) or w_dim % 2 ** (levels - 1):
        raise ValueError(
            f"a U-Net with {levels} levels needs image sides divisible by {2 ** (levels - 1)}; "
            f"got {h_dim}x{w_dim}"
        )
    x_in = keras.Input(shape=(h_dim, w_dim, c), name="x_t")
    e_in = keras.Input(shape=(emb_dim,), name="t_embedding")
    e = keras.layers.Dense(4 * channels[0], activation="silu", name="time_mlp")(e_in)
    h = keras.layers.Conv2D(channels[0], 3, padding="same")(x_in)
    skips = []
    for i, ch in enumerate(channels[:-1]):
        h = _res_block(h, e, ch)
        skips.append(h)
        h = keras.layers.Conv2D(channels[i + 1], 3, strides=2, padding="same")(h)
    h = _res_block(h, e, channels[-1])  # the bottom
    for i in range(levels - 2, -1, -1):
        h = keras.layers.UpSampling2D(2)(h)
        h = keras.layers.Conv2D(channels[i], 3, padding="same")(h)
        h = _res_block(keras.layers.Concatenate()([h, skips[i]]), e, channels[i])
    h = keras.layers.GroupNormalization(_groups(channels[0]))(h)
    h = keras.layers.Activation("silu")(h)
    out = keras.layers.Conv2D(c, 3, padding="same", name="eps", dtype=OUTPUT_DTYPE)(h)
    return keras.Model([x_in, e_in], out, name="eps_unet")


def build_eps_network(params: Any, input_shape: tuple[int, ...]) -> keras.Model:
    conv = use_conv(params.architecture, input_shape)
    hidden = params.resolved_hidden(conv)
    if conv:
        return _unet(input_shape, hidden, params.time_embedding)
    return _mlp(input_shape, hidden, params.time_embedding)
