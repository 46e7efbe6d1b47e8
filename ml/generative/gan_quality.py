"""What the `gan` kind keeps of its generator while it trains: a moving average of the generator's
weights, and each epoch's sample quality on held-out rows with the best epoch's weights.

A GAN's losses say little about its samples (each player's loss is measured against the other,
moving, player), so the model is judged where it is used: samples of the averaged generator
against validation rows, each epoch, next to the floor of held-out real rows against the same
rows. The energy distance for rows, the Fréchet distance in a classifier's features for images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.generative import sample_quality as sq
from ml.generative import shared as generative

BN_REFRESH_BATCHES = 30
MAX_SAMPLES = 2000  # per epoch: enough for a floor an order below a collapsed generator's


class GeneratorAverage:
    """An exponential moving average of all of the generator's variables (batch-norm statistics
    too), with the usual warm-up: decay min(ema, (1 + t) / (10 + t)) at update t."""

    def __init__(self, generator: keras.Model, decay: float) -> None:
        self.source, self.decay = generator, decay
        if decay > 0:
            self.model = keras.models.clone_model(generator)
            self.model.set_weights(generator.get_weights())
            self.updates = tf.Variable(0.0, trainable=False, dtype=tf.float32)
            self._update = tf.function(self._assign)
        else:
            self.model = generator

    def _assign(self) -> None:
        t = self.updates
        decay = tf.minimum(self.decay, (1.0 + t) / (10.0 + t))
        for average, value in zip(self.model.weights, self.source.weights, strict=True):
            average.assign(decay * average + (1.0 - decay) * value)
        self.updates.assign_add(1.0)

    def update(self) -> None:
        if self.decay > 0:
            self._update()

    def save(self, folder: Path) -> None:
        if self.decay > 0:
            self.model.save_weights(folder / "ema.weights.h5")
            (folder / "ema.json").write_text(str(float(self.updates.numpy())))

    def load(self, folder: Path) -> None:
        if self.decay > 0 and (folder / "ema.weights.h5").exists():
            self.model.load_weights(folder / "ema.weights.h5")
            self.updates.assign(float((folder / "ema.json").read_text()))


def refresh_batch_norm(generator: keras.Model, latent: int, batch: int, seed: int) -> None:
    """Re-estimate a generator's batch-norm statistics on fresh z with its current weights."""
    rng = np.random.default_rng([seed, 3])
    for _ in range(BN_REFRESH_BATCHES):
        z = rng.standard_normal((batch, latent)).astype(np.float32)
        generator(tf.constant(z), training=True)


@dataclass
class EpochQuality:
    """Sample quality of the averaged generator after each epoch, and the best epoch's weights."""

    reference: np.ndarray  # real rows (data units) the samples are compared with
    floor_rows: np.ndarray  # other held-out real rows: the floor
    train_raw: np.ndarray
    images: bool
    seed: int
    classifier: Any = None
    offset: Any = None  # standardising, as the final evaluation does
    scale: Any = None
    reference_std: Any = None
    reference_features: Any = None
    floor: dict[str, float] = field(default_factory=dict)
    best_score: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    best_weights: list[np.ndarray] | None = None
    last: float = math.inf

    @classmethod
    def for_data(cls, data: generative.GenerativeData, seed: int) -> EpochQuality | None:
        """Validation rows as the reference (held-out half A when there are none: its final
        evaluation is then not independent of the choice); None without held-out rows."""
        if len(data.held_out_b) < 2:
            return None
        if len(data.validation) >= 2:
            reference = data.scaler.inverse_transform(data.validation)
        else:
            reference = data.held_out_a
        reference = reference[: sq.MAX_ROWS]  # the distances subsample beyond this anyway
        rows = min(MAX_SAMPLES, len(data.held_out_b))
        self = cls(reference, data.held_out_b[:rows], data.train_raw, data.images, seed)
        self.offset, self.scale = sq.standardizer(data.train_raw)
        self.reference_std = self._standardized(reference)
        if data.images:
            self.classifier = sq.FeatureClassifier.fit(data.train_raw, data.labels, seed)
            self.reference_features = self.classifier.features(reference)
        self.floor = self._measure(self.floor_rows)
        return self

    @property
    def metric(self) -> str:
        return "frechet_distance" if self.images else "energy_distance"

    def _standardized(self, rows: np.ndarray) -> np.ndarray:
        return (rows.reshape(len(rows), -1) - self.offset) / self.scale

    def _measure(self, rows: np.ndarray) -> dict[str, float]:
        """Distances of `rows` (data units) to the reference; NaN when any row is not finite
        (such a generator is never the best)."""
        flat = self._standardized(rows)
        names = ["energy_distance", "frechet_distance"] if self.images else ["energy_distance"]
        if not np.isfinite(flat).all():
            return dict.fromkeys(names, math.nan)
        out = {"energy_distance": sq.energy_distance(flat, self.reference_std)}
        if self.images:
            features = self.classifier.features(rows)
            out["frechet_distance"] = sq.frechet_distance(features, self.reference_features)
        return out

    def measure(self, samples: np.ndarray) -> dict[str, float]:
        """The epoch's metric points: `val_<metric>` and `val_<metric>_floor`."""
        values = self._measure(samples)
        points = {f"val_{k}": v for k, v in values.items()}
        points.update({f"val_{k}_floor": v for k, v in self.floor.items()})
        value = values[self.metric]
        self.last = value if math.isfinite(value) else math.inf
        return points

    def note(self, epoch: int, min_delta: float, weights: list[np.ndarray]) -> None:
        """Note the epoch just measured: keep its weights when it is the best so far, and count
        the epochs without an improvement of more than `min_delta` (early stopping's)."""
        self.bad_epochs = 0 if self.last < self.best_score - min_delta else self.bad_epochs + 1
        if self.last < self.best_score:
            self.best_score, self.best_epoch = self.last, epoch
            self.best_weights = [np.array(w) for w in weights]

    def state(self) -> dict[str, Any]:
        best = self.best_score if math.isfinite(self.best_score) else None
        return {"best_score": best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def restore(self, state: dict[str, Any], weights: list[np.ndarray] | None) -> None:
        score = state.get("best_score")
        self.best_score = math.inf if score is None else float(score)
        self.best_epoch, self.bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
        self.best_weights = weights
