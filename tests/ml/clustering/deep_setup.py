"""What the tests of the deep clustering kinds (`dec`, `dcn`) share: four Gaussian blobs, and
short runs of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.core.datasets import Dataset
from tests.ml.anomaly.test_autoencoder import train

FAST = {
    "epochs": 4,
    "batch_size": 32,
    "seed": 0,
    "deterministic": True,
    "telemetry": {"every_steps": 5},
}
# 400 rows at batch size 32 make 13 steps an epoch: with this interval, one update per epoch.
STEPS_PER_EPOCH = 13
PARAMS = {
    "n_clusters": 4,
    "latent_dim": 3,
    "hidden": [16],
    "pretrain_epochs": 3,
    "tol": 0.0,
    "update_interval": STEPS_PER_EPOCH,
}


def four_blobs() -> Dataset:
    """Four Gaussian blobs in 10-D, 100 rows each."""
    rng = np.random.default_rng(1)
    centres = 3.0 * rng.standard_normal((4, 10))
    x = np.concatenate([c + rng.standard_normal((100, 10)) for c in centres]).astype(np.float32)
    return Dataset(x=x, y=np.repeat(np.arange(4), 100), name="blobs", label_type="class")


def fit(
    kind: str, base: dict[str, Any], tmp: Path, data: Dataset, **overrides: Any
) -> tuple[Any, Any]:
    """Train `kind` on `data` with params `base`, FAST training and `overrides` of the spec."""
    params = {**base, **overrides.pop("params", {})}
    return train(kind, {"params": params, "training": FAST, **overrides}, tmp, data)
