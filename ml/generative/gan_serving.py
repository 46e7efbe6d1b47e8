"""The serving side of the `gan` kind: `generate` draws z ~ N(0, I) through the saved generator.

Imported inside the `gan` kind's `load` and at the end of its training, never at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.generative import shared as generative


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
