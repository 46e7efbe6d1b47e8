"""Sample quality of a generative model against held-out real data (NumPy, SciPy, scikit-learn).

- `energy_distance`: Székely's E = 2 E|X − Y| − E|X − X'| − E|Y − Y'| between the two empirical
  distributions (the V-statistic: ≥ 0, and > 0 even for two samples of one distribution, by
  about E|X − X'| (1/n + 1/m) — which is what the `_floor` records).
- `mmd`: the maximum mean discrepancy between the empirical distributions under a Gaussian
  kernel, √(MMD²) with the biased (V-statistic) MMD², bandwidth by the median heuristic.
- `frechet_distance`: ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½) between Gaussians fitted to
  features of a small classifier trained once on the real training rows (FID's recipe at the
  scale of this service); `classifier_confidence` is that classifier's mean top probability.

Every metric of a model's samples is recorded beside the same metric for a second held-out real
sample of the same size (`<name>_floor`): what a perfect generator would score.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_ROWS = 4000  # pairwise terms are O(n²): larger samples are subsampled (seeded)
BLOCK = 1024


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def _mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs (a_i, b_j), diagonal included, in blocks."""
    from scipy.spatial.distance import cdist

    total = 0.0
    for start in range(0, len(a), BLOCK):
        total += float(cdist(a[start : start + BLOCK], b).sum())
    return total / (len(a) * len(b))


def _subsample(x: np.ndarray, rows: int, seed: int) -> np.ndarray:
    if len(x) <= rows:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), rows, replace=False))]


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """2 E|X−Y| − E|X−X'| − E|Y−Y'| of the empirical distributions (V-statistic, ≥ 0)."""
    a, b = _subsample(_flat(x), MAX_ROWS, 1), _subsample(_flat(y), MAX_ROWS, 2)
    value = 2 * _mean_distance(a, b) - _mean_distance(a, a) - _mean_distance(b, b)
    return max(value, 0.0)


def median_bandwidth(x: np.ndarray, rows: int = 1000) -> float:
    """The median heuristic: the median pairwise distance (off the diagonal) of a sample."""
    from scipy.spatial.distance import pdist

    distances = pdist(_subsample(_flat(x), rows, 3))
    median = float(np.median(distances)) if len(distances) else 1.0
    return median if median > 0 else 1.0


def _kernel_mean(a: np.ndarray, b: np.ndarray, bandwidth: float) -> float:
    from scipy.spatial.distance import cdist

    total = 0.0
    for start in range(0, len(a), BLOCK):
        d2 = cdist(a[start : start + BLOCK], b, "sqeuclidean")
        total += float(np.exp(-d2 / (2 * bandwidth**2)).sum())
    return total / (len(a) * len(b))


def mmd(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """√MMD² with k(u, v) = exp(−|u − v|² / 2h²), MMD² the V-statistic (≥ 0)."""
    a, b = _subsample(_flat(x), MAX_ROWS, 1), _subsample(_flat(y), MAX_ROWS, 2)
    squared = (
        _kernel_mean(a, a, bandwidth)
        + _kernel_mean(b, b, bandwidth)
        - 2 * _kernel_mean(a, b, bandwidth)
    )
    return float(np.sqrt(max(squared, 0.0)))


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance² between Gaussians fitted to two feature samples."""
    from scipy import linalg

    a, b = _flat(f1), _flat(f2)
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # dead ReLU features make Σ singular: sqrtm still works
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(root).all():  # nudge both covariances
            jitter = 1e-6 * np.eye(len(s1))
            root = linalg.sqrtm((s1 + jitter) @ (s2 + jitter))
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root.real))
    return max(value, 0.0)


@dataclass
class FeatureClassifier:
    """A one-hidden-layer classifier trained on real rows; its ReLU layer is the feature space."""

    offset: float
    scale: float
    weights: np.ndarray
    bias: np.ndarray
    model: Any

    @classmethod
    def fit(
        cls, x: np.ndarray, labels: np.ndarray | None, seed: int = 0, hidden: int = 64
    ) -> FeatureClassifier:
        """Labels if the data set has classes, else k-means clusters of the rows as labels."""
        from sklearn.neural_network import MLPClassifier

        rows = _flat(x)
        offset, scale = float(rows.mean()), float(rows.std()) or 1.0
        z = (rows - offset) / scale
        if labels is None or len(np.unique(labels)) < 2:
            from sklearn.cluster import KMeans

            labels = KMeans(n_clusters=10, n_init=3, random_state=seed).fit_predict(z)
        with warnings.catch_warnings():  # 300 epochs is plenty for features; no need to converge
            warnings.simplefilter("ignore")
            model = MLPClassifier(
                hidden_layer_sizes=(hidden,), max_iter=300, random_state=seed
            ).fit(z, np.asarray(labels))
        return cls(offset, scale, model.coefs_[0], model.intercepts_[0], model)

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (_flat(x) - self.offset) / self.scale

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(self._z(x) @ self.weights + self.bias, 0.0)

    def confidence(self, x: np.ndarray) -> float:
        """Mean top class probability: low for samples that look like no class."""
        return float(self.model.predict_proba(self._z(x)).max(axis=1).mean())


def standardizer(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offset and scale measuring happens in: per feature for vectors, one for all pixels of
    images; a constant feature keeps scale 1."""
    rows = _flat(train)
    if np.ndim(train) > 2:
        offset, scale = np.full(rows.shape[1], rows.mean()), np.full(rows.shape[1], rows.std())
    else:
        offset, scale = rows.mean(axis=0), rows.std(axis=0)
    return offset, np.where(scale > 0, scale, 1.0)


def evaluate(
    generated: np.ndarray,
    held_out_a: np.ndarray,
    held_out_b: np.ndarray,
    train: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    images: bool = False,
    seed: int = 0,
    classifier: FeatureClassifier | None = None,
) -> dict[str, float]:
    """Metrics of `generated` against held-out real rows A, each beside the same metric for
    held-out real rows B against A (`_floor`). All arrays in the data's own units; distances
    are measured after standardising with the training rows' statistics."""
    offset, scale = standardizer(train)

    def std(x: np.ndarray) -> np.ndarray:
        return (_flat(x) - offset) / scale

    g, a, b = std(generated), std(held_out_a), std(held_out_b)
    finite = np.isfinite(g).all(axis=1)
    g = g[finite]
    bandwidth = median_bandwidth(a)
    out: dict[str, float] = {
        "energy_distance": energy_distance(g, a) if len(g) else float("nan"),
        "energy_distance_floor": energy_distance(b, a),
        "mmd": mmd(g, a, bandwidth) if len(g) else float("nan"),
        "mmd_floor": mmd(b, a, bandwidth),
        "mmd_bandwidth": bandwidth,
        "evaluation_rows": len(a),
        "generated_rows": len(generated),
        "generated_non_finite": int((~finite).sum()),
    }
    if images:
        net = classifier or FeatureClassifier.fit(train, labels, seed)
        fg = net.features(generated[finite]) if len(g) else None
        fa, fb = net.features(held_out_a), net.features(held_out_b)
        out["frechet_distance"] = frechet_distance(fg, fa) if fg is not None else float("nan")
        out["frechet_distance_floor"] = frechet_distance(fb, fa)
        out["classifier_confidence"] = net.confidence(generated[finite]) if len(g) else float("nan")
        out["classifier_confidence_floor"] = net.confidence(held_out_b)
    return out
