"""Deep clustering network (Yang, Fu, Sidiropoulos & Hong 2017, "Towards K-means-friendly
spaces", arXiv:1610.04794), TensorFlow inside: what DCN adds to the driver of
:mod:`ml.clustering.deep`.

- Network updates on the per-row loss ℓ_i = reconstruction_i + (λ/2) ‖f(x_i) − M s_i‖², with
  the assignment s_i = argmin_k ‖f(x_i) − m_k‖² for the current network and centroids (held
  fixed within a step, so gradients reach only the network);
- every `update_interval` optimizer steps, the assignment and centroid updates: every row is
  assigned to its nearest centroid, and each centroid takes the paper's count-weighted step
  m_k ← m_k − (1/c_k)(m_k − f(x_i)), c_k ← c_k + 1 for each row assigned to it, for the rows
  trained since the last update. Applied at once, with every row standing in for the share
  w = update_interval / (steps per epoch) of an epoch's rows that was trained, it is
  m_k ← (c_k m_k + w Σ_i f(x_i)) / (c_k + w n_k): a running mean whose steps shrink as clusters
  accumulate rows (w = 1 when updating once an epoch).

Reconstruction is the autoencoder kinds' mean squared error over features, so λ =
`clustering_weight` weighs a latent squared distance against a per-feature error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ml.anomaly.autoencoding import AutoencoderObjective
from ml.clustering import shared as clustering
from ml.clustering.deep import (
    ClusterState,
    DeepServable,
    Evaluation,
    LatentObjective,
    batched,
    save_model,
    train,
)
from ml.clustering.kmeans_tf import KMeans, squared_distances


def soft_assignment(distances: tf.Tensor, variance: float) -> tf.Tensor:
    """p(k|x) ∝ exp(−‖f(x) − m_k‖² / 2σ²): equal isotropic Gaussians around the centroids, σ²
    the training rows' mean squared distance to their centroid per latent dimension."""
    return tf.nn.softmax(-distances / (2.0 * variance), axis=1)


class DcnObjective(LatentObjective):
    """Reconstruction + (λ/2)·(squared latent distance to the nearest centroid), per row."""

    def __init__(self, autoencoder: AutoencoderObjective, n_clusters: int, weight: float) -> None:
        super().__init__(autoencoder)
        self.weight = float(weight)
        latent = autoencoder.params.latent_dim
        self.centres = tf.Variable(
            tf.zeros((n_clusters, latent)), trainable=False, name="cluster_centres"
        )
        self._reconstruction = tf.function(self.reconstruction, input_signature=self.signature)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return self.autoencoder.trainable_variables

    def reconstruction(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.square(x - self.autoencoder.decoder(self.embed(x))), axis=1)

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        z = self.embed(x)
        reconstruction = tf.reduce_mean(tf.square(x - self.autoencoder.decoder(z)), axis=1)
        distance = tf.reduce_min(squared_distances(z, self.centres), axis=1)
        loss = reconstruction + 0.5 * self.weight * distance
        return loss, {"reconstruction": reconstruction, "clustering": distance}

    def reconstruction_loss(self, x: np.ndarray) -> float:
        return float(np.mean(batched(self._reconstruction, x)))


def nearest(z: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid and its squared distance (float64)."""
    z64, c64 = z.astype(np.float64), centres.astype(np.float64)
    d = (z64**2).sum(axis=1)[:, None] - 2.0 * z64 @ c64.T + (c64**2).sum(axis=1)[None, :]
    labels = d.argmin(axis=1)
    return labels, np.maximum(d[np.arange(len(z)), labels], 0.0)


@dataclass
class Clusters(ClusterState):
    """DCN's state: centroids, their counts and the last assignment (saved with checkpoints)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))

    name = "dcn"
    phase = "joint"
    energy_units = (
        "training loss: mean squared error over features + "
        "(clustering_weight / 2) × squared latent distance to the nearest centroid"
    )

    @classmethod
    def build(cls, autoencoder: AutoencoderObjective, spec: Any, rows: int) -> DcnObjective:
        return DcnObjective(autoencoder, spec.params.n_clusters, spec.params.clustering_weight)

    def start(self, kmeans: KMeans) -> None:
        self.objective.centres.assign(kmeans.centroids)
        self.counts = np.bincount(kmeans.labels, minlength=len(kmeans.centroids)).astype(float)
        self.labels = kmeans.labels
        _, distance = nearest(self.objective.latents(self.x), kmeans.centroids)
        scores = clustering.scores(self.truth, kmeans.labels)
        self.reporter.metrics(0, {"kmeans_loss": float(distance.mean()), **scores})

    def update(self, step: int) -> float:
        """Assign every row, move the centroids (count-weighted); record `kmeans_loss` (mean
        squared latent distance to the assigned centroid, after the move), `changed_fraction`
        and, with class labels, `ari` and `nmi`. Returns the changed fraction."""
        z = self.objective.latents(self.x).astype(np.float64)
        centres = self.objective.centres.numpy().astype(np.float64)
        labels, _ = nearest(z, centres)
        k = len(centres)
        assigned = self.share * np.bincount(labels, minlength=k).astype(np.float64)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, z)
        total = self.counts + assigned
        weighted = self.counts[:, None] * centres + self.share * sums
        moved = np.where(total[:, None] > 0, weighted / np.maximum(total, 1e-300)[:, None], centres)
        self.counts = total
        self.objective.centres.assign(moved.astype(np.float32))
        changed = float(np.mean(labels != self.labels))
        self.labels = labels
        self.info["changed_fraction"] = changed
        _, distance = nearest(z, moved)
        scores = clustering.scores(self.truth, labels)
        values = {"kmeans_loss": float(distance.mean()), "changed_fraction": changed}
        self.reporter.metrics(step, {**values, **scores})
        return changed

    def arrays(self) -> dict[str, np.ndarray]:
        return {"centres": self.objective.centres.numpy(), "counts": self.counts}

    def restore(self, saved: Mapping[str, np.ndarray]) -> None:
        self.objective.centres.assign(saved["centres"])
        self.counts = saved["counts"]

    def evaluate(self, folder: Path) -> Evaluation:
        z = self.objective.latents(self.x)
        centres = self.objective.centres.numpy()
        clusters, distance = nearest(z, centres)
        variance = max(float(distance.mean()) / z.shape[1], 1e-12)
        files = save_model(
            self.objective.autoencoder,
            folder,
            centres=centres.astype(np.float32),
            variance=np.float64(variance),
        )
        scores = {
            **clustering.scores(self.truth, clusters),
            "kmeans_loss": float(distance.mean()),
            "reconstruction_loss": self.objective.reconstruction_loss(self.x),
        }
        return Evaluation(clusters, scores, files, calibration={"variance": variance})


train_dcn = partial(train, Clusters)


class DcnServable(DeepServable):
    """encode (latents) and predict (clusters, soft probabilities and squared latent distances)."""

    def read(self, saved: Mapping[str, np.ndarray]) -> None:
        self.variance = float(saved["variance"])

    def predict(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
        distances = squared_distances(z, self.centres)
        return {
            "clusters": tf.argmin(distances, axis=1),
            "probabilities": soft_assignment(distances, self.variance),
            "distances": distances,
        }
