"""Principal component analysis: the decomposition in TensorFlow (an exact SVD, or the randomised
range finder of Halko, Martinsson & Tropp 2011 for wide data), and the fitted model's maths and
serving in NumPy (a projection is one matrix product; serving does not load TensorFlow). The
`pca` job is in `ml.reduction.pca`.

Conventions are scikit-learn's: rows are centred on their mean, explained variance is
s² / (n − 1), each component's sign makes its largest-magnitude coefficient positive, a float
`n_components` keeps the fewest components whose cumulative explained-variance ratio exceeds it,
and whitening divides each projection by the square root of its explained variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.core.serving import ScaledServable, calibrated_threshold, score_answer

MODEL_FILE = "pca.npz"
# `auto` picks the randomised method when both sides of the data exceed this and fewer than
# RANDOMIZED_SHARE of the possible components are asked for (scikit-learn's rule).
RANDOMIZED_ABOVE = 500
RANDOMIZED_SHARE = 0.8
SCORE_BLOCK = 4096


@dataclass
class Decomposition:
    """Centring mean, components (rows, unit norm), their singular values and explained
    variances, and the data's total variance (sum of feature variances, ddof = 1)."""

    mean: np.ndarray
    components: np.ndarray
    singular_values: np.ndarray
    explained_variance: np.ndarray
    total_variance: float
    method: str

    @property
    def ratio(self) -> np.ndarray:
        if self.total_variance <= 0:
            return np.zeros_like(self.explained_variance)
        return self.explained_variance / self.total_variance

    def keep(self, k: int) -> Decomposition:
        return Decomposition(
            self.mean,
            self.components[:k],
            self.singular_values[:k],
            self.explained_variance[:k],
            self.total_variance,
            self.method,
        )


def resolve_method(method: str, n_components: int | float, rows: int, features: int) -> str:
    """`svd` or `randomized`; `auto` takes the randomised range finder for wide data only."""
    if method != "auto":
        return method
    side = min(rows, features)
    if (
        isinstance(n_components, int)
        and min(rows, features) > RANDOMIZED_ABOVE
        and n_components < RANDOMIZED_SHARE * side
    ):
        return "randomized"
    return "svd"


def default_power_iterations(n_components: int, rows: int, features: int) -> int:
    """scikit-learn's choice: more passes when few components are asked of a large spectrum."""
    return 7 if n_components < 0.1 * min(rows, features) else 4


def _flip_signs(components: Any) -> Any:
    """Make each row's largest-magnitude coefficient positive (scikit-learn's `svd_flip` on v)."""
    import tensorflow as tf

    biggest = tf.argmax(tf.abs(components), axis=1, output_type=tf.int32)
    signs = tf.sign(tf.gather(components, biggest, axis=1, batch_dims=1))
    signs = tf.where(signs == 0, tf.ones_like(signs), signs)
    return components * signs[:, None]


def decompose(
    x: np.ndarray,
    *,
    method: str,
    n_components: int | None = None,
    oversamples: int = 10,
    power_iterations: int | None = None,
    seed: int = 0,
) -> Decomposition:
    """The principal components of the rows of x (float32 or float64; computed in x's dtype).

    `svd` returns every component (min(rows, features)); `randomized` needs `n_components` and
    returns that many, from a subspace of n_components + oversamples random directions refined
    by `power_iterations` passes over the data (each re-orthonormalised with a QR step).
    """
    import tensorflow as tf

    n, d = x.shape
    data = tf.constant(x)
    mean = tf.reduce_mean(data, axis=0)
    centred = data - mean
    total = tf.reduce_sum(tf.square(centred)) / (n - 1)
    if method == "svd":
        s, _, v = tf.linalg.svd(centred, full_matrices=False)
        components = tf.transpose(v)
    elif method == "randomized":
        if n_components is None:
            raise ValueError("the randomised method needs an int n_components")
        width = min(n_components + oversamples, n, d)
        passes = (
            power_iterations
            if power_iterations is not None
            else default_power_iterations(n_components, n, d)
        )
        omega = tf.random.stateless_normal((d, width), [seed, 0], dtype=centred.dtype)
        q, _ = tf.linalg.qr(centred @ omega)
        for _ in range(passes):
            z, _ = tf.linalg.qr(tf.matmul(centred, q, transpose_a=True))
            q, _ = tf.linalg.qr(centred @ z)
        s, _, v = tf.linalg.svd(tf.matmul(q, centred, transpose_a=True), full_matrices=False)
        s, components = s[:n_components], tf.transpose(v)[:n_components]
    else:
        raise ValueError(f"unknown method {method!r}")
    components = _flip_signs(components)
    s = s.numpy()
    return Decomposition(
        mean=mean.numpy(),
        components=components.numpy(),
        singular_values=s,
        explained_variance=s**2 / (n - 1),
        total_variance=float(total),
        method=method,
    )


def components_for(target: float, ratio: np.ndarray) -> int:
    """The fewest components whose cumulative explained-variance ratio exceeds `target`."""
    return min(len(ratio), int(np.searchsorted(np.cumsum(ratio), target, side="right")) + 1)


# --- the maths of a fitted model, shared by training and serving -------------------------------


@dataclass
class PcaModel:
    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    whiten: bool
    residual_variance: np.ndarray | None = None

    def encode(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) @ self.components.T
        if self.whiten:
            z = z / np.sqrt(np.maximum(self.explained_variance, np.finfo(z.dtype).tiny))
        return z

    def decode(self, z: np.ndarray) -> np.ndarray:
        if self.whiten:
            z = z * np.sqrt(self.explained_variance)
        return z @ self.components + self.mean

    def residual(self, x: np.ndarray) -> np.ndarray:
        centred = x - self.mean
        return centred - (centred @ self.components.T) @ self.components

    def score(self, x: np.ndarray) -> np.ndarray:
        """Mean over features of residual² / its variance on normal rows (the autoencoder's
        standardised reconstruction error; the residual is the distance to the subspace)."""
        assert self.residual_variance is not None
        parts = [
            np.mean(self.residual(x[i : i + SCORE_BLOCK]) ** 2 / self.residual_variance, axis=1)
            for i in range(0, len(x), SCORE_BLOCK)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert self.residual_variance is not None
        np.savez(
            path,
            mean=self.mean,
            components=self.components,
            explained_variance=self.explained_variance,
            whiten=np.bool_(self.whiten),
            residual_variance=self.residual_variance,
        )
        return path

    @classmethod
    def load(cls, path: Path) -> PcaModel:
        with np.load(path, allow_pickle=False) as saved:
            return cls(
                mean=saved["mean"],
                components=saved["components"],
                explained_variance=saved["explained_variance"],
                whiten=bool(saved["whiten"]),
                residual_variance=saved["residual_variance"],
            )


# --- serving --------------------------------------------------------------------------------


class PcaServable(ScaledServable):
    """encode (projections), reconstruct (back in the data's units) and score (standardised
    distance to the principal subspace, with the threshold calibrated at training)."""

    serves = ("encode", "reconstruct", "score")

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        super().__init__(meta)
        self.threshold = calibrated_threshold(meta)
        self.model = PcaModel.load(files["pca"])

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        x = self.scaled(operation, inputs, self.model.components.dtype)
        if operation == "encode":
            return {"latents": self.model.encode(x)}
        if operation == "reconstruct":
            out = self.model.decode(self.model.encode(x)).reshape(len(x), *self.input_shape)
            return {"reconstructions": self.scaler.inverse_transform(out)}
        scores = self.model.score(x)
        return score_answer(scores, self.threshold)
