"""Deep embedded clustering (Xie, Girshick & Farhadi 2016, arXiv:1511.06335), TensorFlow inside:
what DEC adds to the driver of :mod:`ml.clustering.deep`.

The encoder and the cluster centres μ_j are refined together, minimising KL(P‖Q) per row:
q_ij ∝ (1 + ‖z_i − μ_j‖²/α)^{−(α+1)/2} (Student-t) and the sharpened target
p_ij ∝ q_ij² / Σ_i q_ij, recomputed from the whole data set every `update_interval` optimizer
steps (the paper's T) and held fixed between updates.

Rows reach the objective with their index appended as a last column, so that each row's
target is looked up in a (non-trainable) variable that a target update simply reassigns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ml.anomaly.autoencoding import AutoencoderObjective
from ml.clustering import deep
from ml.clustering import shared as clustering
from ml.clustering.kmeans_tf import KMeans, squared_distances
from ml.core.reporting import JobFailed

# Row indices travel as float32: exact below 2**24.
MAX_ROWS = 2**24


def log_soft_assignment(z: tf.Tensor, centres: tf.Tensor, alpha: float) -> tf.Tensor:
    """ln q_ij of the Student-t kernel with `alpha` degrees of freedom, normalised over j."""
    d = squared_distances(z, centres)
    return tf.nn.log_softmax(-0.5 * (alpha + 1.0) * tf.math.log1p(d / alpha), axis=1)


def target_distribution(q: np.ndarray) -> np.ndarray:
    """p_ij = (q_ij² / f_j) / Σ_j' (q_ij'² / f_j'), f_j = Σ_i q_ij: sharper, and frequent
    clusters are penalised so that no cluster swallows the others."""
    weight = q**2 / np.maximum(q.sum(axis=0), 1e-12)
    return weight / weight.sum(axis=1, keepdims=True)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    safe = np.maximum(q, 1e-30)
    return np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-30)) - np.log(safe)), 0.0), axis=1)


class DecObjective(deep.LatentObjective):
    """KL(p_i ‖ q_i) per row; the encoder of `autoencoder` and the centres are trained."""

    def __init__(self, autoencoder: AutoencoderObjective, n_clusters: int, alpha: float, rows: int):
        super().__init__(autoencoder)
        self.alpha = float(alpha)
        latent = autoencoder.params.latent_dim
        self.centres = tf.Variable(tf.zeros((n_clusters, latent)), name="cluster_centres")
        self.targets = tf.Variable(tf.zeros((rows, n_clusters)), trainable=False, name="targets")
        self._q = tf.function(lambda x: tf.exp(self.log_q(x)), input_signature=self.signature)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        ae = self.autoencoder
        return [*ae.trunk.trainable_variables, *ae.head.trainable_variables, self.centres]

    def log_q(self, x: tf.Tensor) -> tf.Tensor:
        return log_soft_assignment(self.embed(x), self.centres, self.alpha)

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        features, index = x[:, :-1], tf.cast(x[:, -1], tf.int32)
        p = tf.gather(self.targets, index)
        kl = tf.reduce_sum(tf.math.xlogy(p, p) - p * self.log_q(features), axis=1)
        return kl, {}

    def soft_assignments(self, x: np.ndarray) -> np.ndarray:
        return deep.batched(self._q, x).astype(np.float64)


@dataclass
class Refinement(deep.ClusterState):
    """DEC's state: the centres and the target distribution P in force (saved with checkpoints)."""

    name = "dec"
    phase = "refine"
    energy_units = "training loss: KL(P‖Q) in nats per row (pretraining: mean squared error)"

    @classmethod
    def check(cls, data: clustering.ClusterData) -> None:
        if data.rows >= MAX_ROWS:
            raise JobFailed(
                "invalid_data", f"dec clusters at most {MAX_ROWS - 1} rows; got {data.rows}"
            )

    @classmethod
    def build(cls, autoencoder: AutoencoderObjective, spec: Any, rows: int) -> DecObjective:
        return DecObjective(autoencoder, spec.params.n_clusters, spec.params.alpha, rows)

    def training_rows(self) -> np.ndarray:
        index = np.arange(len(self.x), dtype=np.float32)[:, None]
        return np.concatenate([self.x, index], axis=1)

    def start(self, kmeans: KMeans) -> None:
        self.objective.centres.assign(kmeans.centroids)
        self.labels = kmeans.labels
        self.info["latent_kmeans_inertia"] = kmeans.inertia
        self.update(0)

    def update(self, step: int) -> float:
        """Recompute P from Q on every row; record `kl_loss` = mean KL(P‖Q) with the new P and
        `changed_fraction` (rows whose cluster changed since the last update)."""
        q = self.objective.soft_assignments(self.x)
        p = target_distribution(q)
        labels = q.argmax(axis=1)
        changed = float(np.mean(labels != self.labels)) if len(self.labels) else 1.0
        self.objective.targets.assign(p.astype(np.float32))
        self.labels = labels
        self.info["changed_fraction"] = changed
        scores = clustering.scores(self.truth, labels)
        values = {"kl_loss": float(kl_rows(p, q).mean()), "changed_fraction": changed}
        self.reporter.metrics(step, {**values, **scores})
        return changed

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "centres": self.objective.centres.numpy(),
            "targets": self.objective.targets.numpy(),
        }

    def restore(self, saved: Mapping[str, np.ndarray]) -> None:
        self.objective.centres.assign(saved["centres"])
        self.objective.targets.assign(saved["targets"])

    def evaluate(self, folder: Path) -> deep.Evaluation:
        q = self.objective.soft_assignments(self.x)
        clusters = q.argmax(axis=1)
        targets = self.objective.targets.numpy().astype(np.float64)
        centres, alpha = self.objective.centres.numpy(), np.float64(self.objective.alpha)
        return deep.Evaluation(
            clusters=clusters,
            scores=clustering.scores(self.truth, clusters),
            files=deep.save_model(self.objective.autoencoder, folder, centres=centres, alpha=alpha),
            result={
                "kl_loss": float(kl_rows(targets, q).mean()),
                "latent_kmeans_inertia": self.info.get("latent_kmeans_inertia"),
            },
        )


train_dec = partial(deep.train, Refinement)


class DecServable(deep.DeepServable):
    """encode (latents) and predict (clusters and the soft assignment q) of a saved DEC model."""

    def read(self, saved: Mapping[str, np.ndarray]) -> None:
        self.alpha = float(saved["alpha"])

    def predict(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
        q = tf.exp(log_soft_assignment(z, self.centres, self.alpha))
        return {"clusters": tf.argmax(q, axis=1), "probabilities": q}
