"""Network builders shared by the trained kinds (TensorFlow; import inside job processes only).

Layers are built once and used two ways: applied one by one in training, with dropout drawn
from an explicit stateless seed (so a second forward pass can repeat the same masks), and
assembled into plain Keras models of built-in layers for saving, so that artifacts load with
`safe_mode=True` and no custom objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import keras
import tensorflow as tf

CONV_DOWNSAMPLE = 4  # two stride-2 convolutions
# Layers whose outputs enter a loss compute in float32 even under a mixed-precision policy.
OUTPUT_DTYPE = "float32"


def use_conv(architecture: str, input_shape: Sequence[int]) -> bool:
    """`auto`: convolutions for image rows (H, W, C) whose sides halve twice, dense otherwise."""
    if architecture == "dense":
        return False
    image = len(input_shape) == 3 and all(s % CONV_DOWNSAMPLE == 0 for s in input_shape[:2])
    if architecture == "conv" and not image:
        raise ValueError(
            f"architecture 'conv' needs image rows (height, width, channels) with sides divisible "
            f"by {CONV_DOWNSAMPLE}; got rows of shape {list(input_shape)}"
        )
    return image


def stateless_dropout(h: tf.Tensor, rate: float, seed: tf.Tensor) -> tf.Tensor:
    keep = tf.random.stateless_uniform(tf.shape(h), seed) >= rate
    return tf.where(keep, h / (1.0 - rate), tf.zeros_like(h))


@dataclass
class Stack:
    """A sequence of layers; `dropout_after` marks the hidden layers followed by dropout."""

    layers: list[keras.layers.Layer]
    dropout_after: set[int] = field(default_factory=set)

    def __call__(
        self, h: tf.Tensor, *, dropout: float = 0.0, seed: tf.Tensor | None = None
    ) -> tf.Tensor:
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if dropout > 0 and seed is not None and i in self.dropout_after:
                h = stateless_dropout(h, dropout, tf.stack([seed[0], seed[1] * 31 + i]))
        return h

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return [v for layer in self.layers for v in layer.trainable_variables]


def encoder_trunk(
    input_shape: Sequence[int], hidden: Sequence[int], activation: str, conv: bool
) -> Stack:
    """Everything up to (not including) the latent head."""
    if not conv:
        layers: list[keras.layers.Layer] = []
        if len(input_shape) > 1:
            layers.append(keras.layers.Flatten())
        offset = len(layers)
        layers += [keras.layers.Dense(s, activation=activation) for s in hidden]
        return Stack(layers, {offset + i for i in range(len(hidden))})
    filters = (32, 64)
    layers = [
        keras.layers.Conv2D(f, 3, strides=2, padding="same", activation=activation) for f in filters
    ]
    layers.append(keras.layers.Flatten())
    layers += [keras.layers.Dense(s, activation=activation) for s in hidden]
    return Stack(layers, {len(layers) - 1 - i for i in range(len(hidden))})


def decoder_stack(
    input_shape: Sequence[int],
    hidden: Sequence[int],
    activation: str,
    conv: bool,
    out_activation: str | None,
) -> Stack:
    """From a latent vector back to a row of `input_shape` (mirror of the encoder)."""
    reversed_hidden = list(reversed(hidden))
    if not conv:
        size = 1
        for s in input_shape:
            size *= int(s)
        layers = [keras.layers.Dense(s, activation=activation) for s in reversed_hidden]
        layers.append(keras.layers.Dense(size, activation=out_activation, dtype=OUTPUT_DTYPE))
        if len(input_shape) > 1:
            layers.append(keras.layers.Reshape(tuple(input_shape), dtype=OUTPUT_DTYPE))
        return Stack(layers, set(range(len(reversed_hidden))))
    h, w, c = (int(s) for s in input_shape)
    small = (h // CONV_DOWNSAMPLE, w // CONV_DOWNSAMPLE, 64)
    layers = [keras.layers.Dense(s, activation=activation) for s in reversed_hidden]
    layers += [
        keras.layers.Dense(small[0] * small[1] * small[2], activation=activation),
        keras.layers.Reshape(small),
        keras.layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation=activation),
        keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation=activation),
        keras.layers.Conv2D(c, 3, padding="same", activation=out_activation, dtype=OUTPUT_DTYPE),
    ]
    return Stack(layers, set(range(len(reversed_hidden))))


def as_model(stack: Stack, input_shape: Sequence[int], name: str) -> keras.Model:
    """A functional Keras model over the stack's layers (shared weights), for saving."""
    inputs = keras.Input(shape=tuple(input_shape), name=f"{name}_input")
    return keras.Model(inputs, stack(inputs), name=name)


def with_heads(
    trunk: Stack, heads: Sequence[keras.layers.Layer], input_shape: Sequence[int], name: str
) -> keras.Model:
    inputs = keras.Input(shape=tuple(input_shape), name=f"{name}_input")
    h = trunk(inputs)
    return keras.Model(inputs, [head(h) for head in heads], name=name)
