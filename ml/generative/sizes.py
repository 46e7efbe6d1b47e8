"""The weights of the `gan` and `diffusion` networks (`gan_networks`, `diffusion_networks`),
counted without building them: pure arithmetic, for the size check at submit time."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ml.core.sizing import CONV_DOWNSAMPLE, SizeEstimate, chain, conv, dense

BATCH_NORM = 4  # γ, β and the moving mean and variance, per unit
GAN_FILTERS = 32  # as gan_networks' conv pair
GROUP_NORM = 2  # γ and β per channel
UNET_MAPS = 8


def gan_parameters(
    estimate: SizeEstimate,
    row_shape: Sequence[int],
    *,
    latent_dim: int,
    generator_hidden: Sequence[int],
    discriminator_hidden: Sequence[int],
    conv_rows: bool,
    batch_norm: bool = True,
    spectral: bool = False,
) -> list[int]:
    """Add the generator's and the discriminator's weights (with `spectral`, each of the
    discriminator's layers keeps a vector u of its outputs); the widths their layers output."""
    features = math.prod(row_shape)
    if conv_rows:
        h, w, c = (int(s) for s in row_shape)
        f = GAN_FILTERS
        small = (h // CONV_DOWNSAMPLE) * (w // CONV_DOWNSAMPLE)
        estimate.add_parameters("params.latent_dim", dense(latent_dim, small * 4 * f))
        generator = BATCH_NORM * small * 4 * f + conv(4, 4 * f, 2 * f) + BATCH_NORM * 2 * f
        generator += conv(4, 2 * f, f) + BATCH_NORM * f + conv(3, f, c)
        discriminator = conv(4, c, f) + conv(4, f, 2 * f) + dense(small * 2 * f, 1)
        discriminator += (f + 2 * f + 1) if spectral else 0
        estimate.add_parameters("params.architecture", generator + discriminator)
        return [small * 4 * f, small * 8 * f, h * w * f, features, h * w * f // 4, small * 2 * f]
    body, last = chain(latent_dim, generator_hidden)
    norm = BATCH_NORM * sum(generator_hidden) if batch_norm else 0
    estimate.add_parameters("params.generator_hidden", body + norm)
    estimate.add_parameters("params.generator_hidden", dense(last, features))
    body, last = chain(features, discriminator_hidden)
    u = sum(discriminator_hidden) + 1 if spectral else 0
    estimate.add_parameters("params.discriminator_hidden", body + dense(last, 1) + u)
    return [*generator_hidden, features, *discriminator_hidden, 1]


def diffusion_parameters(
    estimate: SizeEstimate,
    row_shape: Sequence[int],
    *,
    hidden: Sequence[int],
    time_embedding: int,
    conv_rows: bool,
) -> list[int]:
    """Add the ε-network's weights (the residual MLP or the U-Net); the widths it outputs."""
    if conv_rows:
        return _unet(estimate, row_shape, hidden, time_embedding)
    features = math.prod(row_shape)
    first = hidden[0]
    total = dense(time_embedding, first) + dense(features, first)
    width = first
    for w in hidden:
        total += dense(width, w) + dense(first, w)
        width = w
    estimate.add_parameters("params.hidden", total + dense(width, features))
    return [first, first, *(2 * w for w in hidden), features]


def _res_block(c_in: int, c_out: int, embedding: int) -> int:
    skip = 0 if c_in == c_out else conv(1, c_in, c_out)
    return (
        skip
        + GROUP_NORM * c_in
        + conv(3, c_in, c_out)
        + dense(embedding, c_out)
        + GROUP_NORM * c_out
        + conv(3, c_out, c_out)
    )


def _unet(
    estimate: SizeEstimate, row_shape: Sequence[int], channels: Sequence[int], time_embedding: int
) -> list[int]:
    h, w, c = (int(s) for s in row_shape)
    embedding = 4 * channels[0]
    total = dense(time_embedding, embedding) + conv(3, c, channels[0])
    width = channels[0]
    for i, ch in enumerate(channels[:-1]):
        total += _res_block(width, ch, embedding) + conv(3, ch, channels[i + 1])
        width = channels[i + 1]
    total += _res_block(width, channels[-1], embedding)
    width = channels[-1]
    for i in range(len(channels) - 2, -1, -1):
        total += conv(3, width, channels[i]) + _res_block(2 * channels[i], channels[i], embedding)
        width = channels[i]
    total += GROUP_NORM * channels[0] + conv(3, channels[0], c)
    estimate.add_parameters("params.hidden", total)
    # A level's blocks hold ~8 maps of its resolution and channels, going down and coming up.
    return [2 * UNET_MAPS * (h * w >> (2 * i)) * ch for i, ch in enumerate(channels)]
