"""The weights of the autoencoder and VAE networks (`ml.core.networks`' encoder trunk, latent
heads and mirrored decoder), counted without building them: pure arithmetic."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ml.core.sizing import CONV_DOWNSAMPLE, SizeEstimate, chain, conv, dense, use_conv

CONV_FILTERS = (32, 64)  # as ml.core.networks
HIDDEN = "params.hidden"
LATENT = "params.latent_dim"


def autoencoder_parameters(
    estimate: SizeEstimate,
    row_shape: Sequence[int],
    *,
    hidden: Sequence[int],
    latent_dim: int,
    architecture: str,
    latent_heads: int = 1,
) -> list[int]:
    """Add the weights of an autoencoder with `latent_heads` heads (2 for a VAE's mean and log
    variance) to `estimate`; the widths its layers output, for the activations' memory."""
    features = math.prod(row_shape)
    widths: list[int] = []
    if use_conv(architecture, row_shape):
        h, w, c = (int(s) for s in row_shape)
        small = (h // CONV_DOWNSAMPLE) * (w // CONV_DOWNSAMPLE) * CONV_FILTERS[-1]
        f1, f2 = CONV_FILTERS
        fixed = conv(3, c, f1) + conv(3, f1, f2)  # encoder
        fixed += conv(3, f2, f2) + conv(3, f2, f1) + conv(3, f1, c)  # decoder's transposes
        estimate.add_parameters("params.architecture", fixed)
        widths += [h * w * f1 // 4, small, small, h * w * f1]
        trunk_in, decoder_out = small, small
    else:
        trunk_in, decoder_out = features, features
    trunk, last = chain(trunk_in, hidden)
    estimate.add_parameters(HIDDEN, trunk)
    estimate.add_parameters(LATENT, latent_heads * dense(last, latent_dim))
    back, last = chain(latent_dim, list(reversed(hidden)))
    estimate.add_parameters(HIDDEN, back)
    estimate.add_parameters(HIDDEN if hidden else LATENT, dense(last, decoder_out))
    widths += [*hidden, latent_heads * latent_dim, *hidden, decoder_out]
    return widths
