"""k-means in TensorFlow, on whatever device the worker has: greedy k-means++ seeding and Lloyd
iterations as compiled graphs, with scikit-learn's conventions (tolerance relative to the mean
feature variance, strict convergence when no assignment changes, empty clusters moved to the
points farthest from their centroids); and the serving side of centroid models (`kmeans`,
`annealing`, saved by `ml.clustering.shared.save_centroids`).

TensorFlow is imported here; import this module only inside a job's process or on serving.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from ml.core.serving import ScaledServable


def squared_distances(x: tf.Tensor, centroids: tf.Tensor) -> tf.Tensor:
    """‖x_i − c_j‖² for every row and centroid, [rows, k] (clipped at 0 against rounding)."""
    x2 = tf.reduce_sum(tf.square(x), axis=1, keepdims=True)
    c2 = tf.reduce_sum(tf.square(centroids), axis=1)
    return tf.maximum(x2 - 2.0 * tf.matmul(x, centroids, transpose_b=True) + c2[None, :], 0.0)


@dataclass
class KMeansRun:
    """One restart: its centroids, assignments, final inertia and inertia per iteration."""

    restart: int
    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    history: np.ndarray
    converged: bool

    @property
    def n_iter(self) -> int:
        return len(self.history)


class KMeans:
    """k-means with `n_clusters` centroids on rows of `features` numbers (float32).

    `fit` runs `n_init` restarts, each seeded from (seed, restart) with stateless random draws,
    and keeps the one with the lowest inertia (sum of squared distances to the nearest centroid).
    """

    def __init__(self, n_clusters: int, features: int, *, max_iter: int = 300) -> None:
        self.k = n_clusters
        self.max_iter = max_iter
        # scikit-learn's greedy k-means++: 2 + ln k candidates per centre, keep the best one.
        self.trials = 2 + int(math.log(n_clusters))
        rows = tf.TensorSpec((None, features), tf.float32)
        self._seed = tf.function(
            self._kmeans_plus_plus, input_signature=[rows, tf.TensorSpec((2,), tf.int32)]
        )
        self._lloyd = tf.function(
            self._lloyd_loop,
            input_signature=[
                rows,
                tf.TensorSpec((n_clusters, features), tf.float32),
                tf.TensorSpec((), tf.float32),
            ],
        )

    def _kmeans_plus_plus(self, x: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        n = tf.shape(x)[0]
        first = tf.random.stateless_uniform([], seed, minval=0, maxval=n, dtype=tf.int32)
        chosen = x[first][None, :]
        centroids = tf.tensor_scatter_nd_update(
            tf.zeros((self.k, tf.shape(x)[1]), x.dtype), [[0]], chosen
        )
        closest = squared_distances(x, chosen)[:, 0]

        def add_centre(i: tf.Tensor, centroids: tf.Tensor, closest: tf.Tensor) -> tuple:
            potential = tf.reduce_sum(closest)
            draws = tf.random.stateless_uniform(
                [self.trials], tf.random.experimental.stateless_fold_in(seed, i), dtype=x.dtype
            )
            candidates = tf.searchsorted(tf.cumsum(closest), draws * potential)
            candidates = tf.minimum(tf.cast(candidates, tf.int32), n - 1)
            points = tf.gather(x, candidates)
            nearest = tf.minimum(closest[:, None], squared_distances(x, points))
            best = tf.argmin(tf.reduce_sum(nearest, axis=0), output_type=tf.int32)
            centroids = tf.tensor_scatter_nd_update(centroids, [[i]], points[best][None, :])
            return i + 1, centroids, nearest[:, best]

        _, centroids, _ = tf.while_loop(
            lambda i, *_: i < self.k, add_centre, (tf.constant(1), centroids, closest)
        )
        return centroids

    def _relocate_empty(
        self, x: tf.Tensor, means: tf.Tensor, counts: tf.Tensor, nearest: tf.Tensor
    ) -> tf.Tensor:
        empty = counts == 0

        def move() -> tf.Tensor:
            farthest = tf.math.top_k(nearest, k=self.k).indices
            rank = tf.maximum(tf.cumsum(tf.cast(empty, tf.int32)) - 1, 0)
            return tf.where(empty[:, None], tf.gather(x, tf.gather(farthest, rank)), means)

        return tf.cond(tf.reduce_any(empty), move, lambda: means)

    def _lloyd_loop(self, x: tf.Tensor, centroids: tf.Tensor, tol: tf.Tensor) -> tuple:
        n = tf.shape(x)[0]
        history = tf.TensorArray(tf.float32, size=self.max_iter)

        def iterate(i, centroids, labels, _done, history):  # type: ignore[no-untyped-def]
            distances = squared_distances(x, centroids)
            assigned = tf.argmin(distances, axis=1, output_type=tf.int32)
            nearest = tf.reduce_min(distances, axis=1)
            history = history.write(i, tf.reduce_sum(nearest))
            # Sums per cluster as a matmul with the one-hot assignment: deterministic on GPUs.
            onehot = tf.one_hot(assigned, self.k, dtype=x.dtype)
            counts = tf.reduce_sum(onehot, axis=0)
            means = tf.matmul(onehot, x, transpose_a=True) / tf.maximum(counts, 1.0)[:, None]
            means = self._relocate_empty(x, means, counts, nearest)
            # Converged: no assignment changed (strict), or the centroids barely moved.
            strict = tf.reduce_all(tf.equal(assigned, labels))
            shift = tf.reduce_sum(tf.square(means - centroids))
            return i + 1, means, assigned, strict | (shift <= tol), history

        start = (tf.constant(0), centroids, tf.fill([n], -1), tf.constant(False), history)
        i, centroids, _, done, history = tf.while_loop(
            lambda i, _c, _l, done, _h: tf.logical_and(i < self.max_iter, tf.logical_not(done)),
            iterate,
            start,
        )
        # The assignment that goes with the final centroids (scikit-learn does the same).
        distances = squared_distances(x, centroids)
        labels = tf.argmin(distances, axis=1, output_type=tf.int32)
        inertia = tf.reduce_sum(tf.reduce_min(distances, axis=1))
        return centroids, labels, inertia, history.stack()[:i], done

    def fit(
        self,
        x: np.ndarray,
        *,
        n_init: int = 10,
        tol: float = 1e-4,
        seed: int = 0,
        on_restart: Callable[[KMeansRun], None] | None = None,
    ) -> KMeansRun:
        """The best of `n_init` restarts; `tol` is relative to the mean variance of a feature."""
        rows = tf.constant(np.ascontiguousarray(x, dtype=np.float32))
        tol_abs = tf.constant(tol * float(np.mean(np.var(x, axis=0, dtype=np.float64))))
        best: KMeansRun | None = None
        for restart in range(n_init):
            start = self._seed(rows, tf.constant([seed, restart], tf.int32))
            centroids, labels, inertia, history, done = self._lloyd(rows, start, tol_abs)
            run = KMeansRun(
                restart=restart,
                centroids=centroids.numpy(),
                labels=labels.numpy().astype(np.int64),
                inertia=float(inertia),
                history=history.numpy().astype(np.float64),
                converged=bool(done),
            )
            if on_restart is not None:
                on_restart(run)
            if best is None or run.inertia < best.inertia:
                best = run
        assert best is not None
        return best


# --- serving --------------------------------------------------------------------------------


class CentroidServable(ScaledServable):
    """`predict` of a centroid model, compiled once for rows of the model's input shape.

    Distances are squared Euclidean distances to each centroid in the *scaled* space (after the
    model's preprocessing). A model saved with a `temperature` (deterministic annealing) also
    answers the Gibbs probabilities p(y|x) = p(y) e^{−d/T} / Z_x, and its clusters are their argmax.
    """

    serves = ("predict",)

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        super().__init__(meta)
        with np.load(files["centroids"], allow_pickle=False) as saved:
            self.centroids = tf.constant(saved["centroids"], tf.float32)
            soft = "temperature" in saved.files
            self.temperature = float(saved["temperature"]) if soft else None
            self.log_weights = tf.constant(saved["log_weights"], tf.float32) if soft else None
        features = int(np.prod(self.input_shape))
        spec = [tf.TensorSpec((None, features), tf.float32)]
        self._predict = tf.function(self._predict_fn, input_signature=spec)

    def _predict_fn(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        distances = squared_distances(x, self.centroids)
        if self.temperature is None:
            return {"clusters": tf.argmin(distances, axis=1), "distances": distances}
        assert self.log_weights is not None
        probabilities = tf.nn.softmax(self.log_weights[None, :] - distances / self.temperature)
        return {
            "clusters": tf.argmax(probabilities, axis=1),
            "probabilities": probabilities,
            "distances": distances,
        }

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        x = self.scaled(operation, inputs, np.float32)
        out = self._predict(tf.constant(x.astype(np.float32, copy=False)))
        return {name: value.numpy() for name, value in out.items()}
