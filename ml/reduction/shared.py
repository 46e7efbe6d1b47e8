"""What the dimensionality-reduction kinds (`pca`, `tsne`) and `hierarchical` share, in NumPy:
the data set's rows checked and flattened, scaling fitted on the rows a model learns from, and
the labels that colour a picture. (A parameter that cannot fit the data set is refused at submit
time through `JobSpec.data_problem`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.clustering.shared import class_labels, numeric_rows
from ml.core.preprocessing import Scaler
from ml.core.reporting import RunContext


@dataclass
class Rows:
    """A data set's rows as given (numeric, finite, at least one), its labels and their meaning."""

    raw: np.ndarray
    feature_shape: tuple[int, ...]
    labels: np.ndarray | None  # class labels (for ARI / NMI), None when the labels are not classes
    y: np.ndarray | None  # the labels as given, for anomaly masks
    colour: np.ndarray | None  # what a picture colours rows by: classes or continuous values
    colour_type: str | None  # "class" | "continuous"
    anomaly_label: int | None

    @property
    def rows(self) -> int:
        return int(self.raw.shape[0])

    @property
    def features(self) -> int:
        return int(np.prod(self.feature_shape, dtype=np.int64))


def load_rows(context: RunContext, kind: str) -> Rows:
    """The data set's rows; `invalid_data` when there are none, or they are not finite numbers."""
    data, raw = numeric_rows(context, kind, "are not numbers")
    y = None if data.y is None else np.asarray(data.y)
    colour, colour_type = None, None
    if y is not None and y.ndim == 1 and len(y) == len(raw) and y.dtype.kind in "biuf":
        colour = y.astype(np.float64)
        colour_type = "continuous" if data.label_type == "continuous" else "class"
    return Rows(
        raw=raw,
        feature_shape=tuple(int(d) for d in raw.shape[1:]),
        labels=class_labels(data),
        y=y,
        colour=colour,
        colour_type=colour_type,
        anomaly_label=data.anomaly_label,
    )


def fit_scaler(spec: Any, raw: np.ndarray) -> Scaler:
    """The spec's preprocessing, fitted on `raw` (the rows the model learns from)."""
    return Scaler.from_spec(spec.preprocessing).fit(raw)


def flat(scaler: Scaler, raw: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Rows scaled and flattened to vectors, contiguous, in `dtype`."""
    features = int(np.prod(raw.shape[1:], dtype=np.int64))
    x = scaler.transform(raw.astype(dtype, copy=False)).reshape(len(raw), features)
    return np.ascontiguousarray(x, dtype=dtype)


def subsample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` of n rows drawn without replacement (all rows when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
