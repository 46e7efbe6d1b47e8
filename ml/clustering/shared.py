"""What the clustering kinds share, in NumPy: the rows they cluster, the checks that turn bad
data into an `invalid_data` failure, and the scores against known labels (ARI, NMI).

Clustering is transductive: every row of the data set is clustered (no validation split), the
scaler is fitted on all rows, and the model clusters rows flattened to vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.core.preprocessing import Scaler
from ml.core.reporting import JobFailed, ModelOutcome, RunContext
from ml.core.spec import too_many_clusters

if TYPE_CHECKING:
    from ml.core.datasets import Dataset

CENTROIDS_FILE = "centroids.npz"
# The centroid models (`kmeans`, `annealing`) predict clusters, served by one class.
CENTROID_SERVES = frozenset({"predict"})
CENTROID_SERVABLE = "ml.clustering.kmeans_tf:CentroidServable"
# What a kind whose model is a set of centroids registers with: `register_kind(..., **CENTROIDS)`.
CENTROIDS: dict[str, Any] = {"serves": CENTROID_SERVES, "servable": CENTROID_SERVABLE}
# Rows sampled first when looking for k distinct ones; all rows are compared when they fall short.
DISTINCT_SAMPLE = 1_000


@dataclass
class ClusterData:
    """Scaled rows flattened to vectors (float32), the fitted scaler and the class labels."""

    x: np.ndarray
    feature_shape: tuple[int, ...]
    scaler: Scaler
    labels: np.ndarray | None

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    def model(self, files: dict[str, Path], serves: frozenset[str], **fields: Any) -> ModelOutcome:
        """A model of these rows serving `serves` (see :func:`model_outcome`)."""
        return model_outcome(files, self.feature_shape, self.scaler, serves, **fields)


def class_labels(data: Any) -> np.ndarray | None:
    """The data set's labels when they name classes (continuous labels say nothing here)."""
    y = getattr(data, "y", None)
    if y is None or getattr(data, "label_type", None) == "continuous":
        return None
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != data.rows or y.dtype.kind not in "biuf":
        return None
    if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
        return None
    return y.astype(np.int64)


def distinct_rows_at_least(x: np.ndarray, k: int) -> int:
    """min(k, the number of distinct rows of x), without sorting every row when a sample will do."""
    # Adding 0.0 turns -0.0 into 0.0, so that equal numbers have equal bytes.
    rows = np.ascontiguousarray(x.reshape(len(x), -1) + np.zeros((), x.dtype))
    as_bytes = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    size = max(DISTINCT_SAMPLE, 4 * k)
    if len(as_bytes) > size:
        picked = np.random.default_rng(0).choice(len(as_bytes), size=size, replace=False)
        if len(np.unique(as_bytes[picked])) >= k:
            return k
    return min(k, len(np.unique(as_bytes)))


def check_cluster_count(x: np.ndarray, k: int, name: str = "n_clusters") -> None:
    """Fail with `invalid_data` when k clusters cannot be formed from the rows of x."""
    too_many = too_many_clusters(k, len(x), name)
    if too_many is not None:
        raise JobFailed("invalid_data", too_many)
    distinct = distinct_rows_at_least(x, k)
    if distinct < k:
        raise JobFailed(
            "invalid_data",
            f"the data set has only {distinct} distinct rows, fewer than {name} = {k}: "
            f"ask for at most {distinct} clusters",
        )


def numeric_rows(context: RunContext, who: str, unusable: str) -> tuple[Dataset, np.ndarray]:
    """The run's data set and its rows, at least 2-d; `invalid_data` when `who` got no data set,
    or its rows are none or not finite numbers (`unusable` ends the message for another dtype)."""
    data = context.dataset
    if data is None:
        raise JobFailed("invalid_data", f"{who} needs a data set (`dataset` in the spec)")
    raw = np.asarray(data.x)
    if raw.ndim < 2:
        raw = raw.reshape(-1, 1)
    if raw.dtype.kind not in "biuf":
        raise JobFailed("invalid_data", f"rows of dtype {raw.dtype} {unusable}")
    if len(raw) == 0:
        raise JobFailed("invalid_data", "the data set has no rows")
    if not np.isfinite(raw).all():
        raise JobFailed("invalid_data", "the data set holds NaN or infinite values")
    return data, raw


def prepare(spec: Any, context: RunContext, k: int, name: str = "n_clusters") -> ClusterData:
    """The data set's rows, scaled with the spec's preprocessing, flattened and checked."""
    data, raw = numeric_rows(context, "this kind", "cannot be clustered")
    scaler = Scaler.from_spec(spec.preprocessing).fit(raw)
    x = scaler.transform(raw.astype(np.float32, copy=False)).reshape(len(raw), -1)
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_cluster_count(x, k, name)
    feature_shape = tuple(int(d) for d in raw.shape[1:])
    return ClusterData(x=x, feature_shape=feature_shape, scaler=scaler, labels=class_labels(data))


def scores(truth: np.ndarray | None, clusters: np.ndarray) -> dict[str, float]:
    """Adjusted Rand index and normalised mutual information against class labels."""
    if truth is None or len(np.unique(truth)) < 2:
        return {}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "ari": float(adjusted_rand_score(truth, clusters)),
        "nmi": float(normalized_mutual_info_score(truth, clusters)),
    }


def sizes(clusters: np.ndarray, k: int) -> list[int]:
    return [int(c) for c in np.bincount(clusters, minlength=k)]


def save_centroids(folder: Path, centroids: np.ndarray, **extra: Any) -> Path:
    """`centroids.npz`: the centroids (float32) and any `extra` arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CENTROIDS_FILE
    arrays = {"centroids": np.asarray(centroids, dtype=np.float32)}
    arrays.update({name: np.asarray(value) for name, value in extra.items()})
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def model_outcome(
    files: dict[str, Path],
    feature_shape: tuple[int, ...],
    scaler: Scaler,
    serves: frozenset[str],
    **fields: Any,
) -> ModelOutcome:
    """A trained model of rows of `feature_shape`, scaled by `scaler`, serving `serves`; `fields`
    are the rest of :class:`ModelOutcome` (evaluation, calibration, pictures)."""
    return ModelOutcome(
        files=files,
        input_shape=list(feature_shape),
        capabilities=sorted(serves),
        preprocessing=scaler.to_dict(),
        **fields,
    )
