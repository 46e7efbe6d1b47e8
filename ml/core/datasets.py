"""Data sets: the built-in ones (generated or shipped offline) and summaries of any data set.

Built-ins come from scikit-learn's bundled files or are generated with a fixed seed, so the same
name always gives the same arrays and nothing is downloaded. Uploaded files are read by
`ml.core.loaders` (`load_file` and `detect_format` here are theirs); both give a
:class:`Dataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ml.core.dataset_types import DataError as DataError
from ml.core.dataset_types import Dataset as Dataset
from ml.core.dataset_types import LabelType as LabelType
from ml.core.loaders import detect_format as detect_format
from ml.core.loaders import load_file as load_file

BUILTIN_PREFIX = "builtin:"
SEED = 0


class UnknownDataset(LookupError):
    def __init__(self, name: str) -> None:
        known = ", ".join(b.ref for b in list_builtins())
        super().__init__(f"unknown built-in data set {name!r}; built-ins: {known}")


@dataclass(frozen=True)
class BuiltinInfo:
    name: str
    shape: list[int]
    dtype: str
    description: str
    labels: str | None
    label_type: LabelType | None

    @property
    def ref(self) -> str:
        return f"{BUILTIN_PREFIX}{self.name}"

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def features(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))


@dataclass(frozen=True)
class _Builtin:
    description: str
    labels: str
    label_type: LabelType
    make: Callable[[], tuple[np.ndarray, np.ndarray]]
    anomaly_label: int | None = None


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32)[..., np.newaxis], bunch.target.astype(np.int64)


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    # scikit-learn codes malignant as 0; here the anomaly class (malignant) is 1.
    return bunch.data.astype(np.float32), (bunch.target == 0).astype(np.int64)


def _wine() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


def _swiss_roll_3d() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_swiss_roll

    x, t = make_swiss_roll(n_samples=10_000, noise=0.1, random_state=SEED)
    return (x / 10.0).astype(np.float32), t.astype(np.float32)


def _swiss_roll() -> tuple[np.ndarray, np.ndarray]:
    x, t = _swiss_roll_3d()
    return np.ascontiguousarray(x[:, [0, 2]]), t


def _moons() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=10_000, noise=0.1, random_state=SEED)
    return x.astype(np.float32), y.astype(np.int64)


def _eight_gaussians() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    n = 10_000
    angles = np.arange(8) * (np.pi / 4)
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = rng.integers(0, 8, size=n)
    x = (centers[labels] + 0.5 * rng.standard_normal((n, 2))) / np.sqrt(2.0)
    return x.astype(np.float32), labels.astype(np.int64)


_BUILTINS: dict[str, _Builtin] = {
    "digits": _Builtin(
        "1797 handwritten digits as 8x8x1 grey images (UCI), pixel values 0-16.",
        "the digit shown, 0-9",
        "class",
        _digits,
    ),
    "breast_cancer": _Builtin(
        "569 breast tumour biopsies (Wisconsin diagnostic), 30 real-valued cell features.",
        "1 = malignant (the anomaly class), 0 = benign",
        "class",
        _breast_cancer,
        anomaly_label=1,
    ),
    "wine": _Builtin(
        "178 Italian wines, 13 chemical measurements each (UCI wine recognition).",
        "the cultivar, 0-2",
        "class",
        _wine,
    ),
    "swiss_roll": _Builtin(
        "10000 points of the 2-D swiss roll of Sohl-Dickstein et al. (2015): the (x, z) "
        "coordinates of swiss_roll_3d, noise 0.1, divided by 10.",
        "position t along the roll (continuous, 4.7-14.1)",
        "continuous",
        _swiss_roll,
    ),
    "swiss_roll_3d": _Builtin(
        "10000 points on the 3-D swiss roll manifold, noise 0.1, divided by 10.",
        "position t along the roll (continuous, 4.7-14.1)",
        "continuous",
        _swiss_roll_3d,
    ),
    "moons": _Builtin(
        "10000 points of two interleaving half circles in 2-D, noise 0.1.",
        "the moon a point belongs to, 0 or 1",
        "class",
        _moons,
    ),
    "eight_gaussians": _Builtin(
        "10000 points from 8 Gaussians (std 0.35) on a circle of radius 2.83 in 2-D.",
        "the Gaussian a point was drawn from, 0-7",
        "class",
        _eight_gaussians,
    ),
}


def builtin_names() -> list[str]:
    return sorted(_BUILTINS)


def load_builtin(name: str) -> Dataset:
    """The built-in data set `name` (with or without the `builtin:` prefix); fresh arrays."""
    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in _BUILTINS:
        raise UnknownDataset(name)
    entry = _BUILTINS[key]
    x, y = entry.make()
    return Dataset(
        x=x,
        y=y,
        name=key,
        description=entry.description,
        labels=entry.labels,
        label_type=entry.label_type,
        anomaly_label=entry.anomaly_label,
    )


@lru_cache
def list_builtins() -> list[BuiltinInfo]:
    """Every built-in, with its shape and dtype (generated once per process)."""
    infos = []
    for name in builtin_names():
        data = load_builtin(name)
        infos.append(
            BuiltinInfo(
                name, data.shape, data.dtype, data.description, data.labels, data.label_type
            )
        )
    return infos


def _finite_floats(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


STATS_BLOCK_ROWS = 65_536


def column_stats(columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-column mean, std, min and max in float64, over blocks of rows: memory stays small
    however many rows there are (two passes, so the variance does not cancel)."""
    n = columns.shape[0]
    blocks = range(0, n, STATS_BLOCK_ROWS)
    total = np.zeros(columns.shape[1])
    low = np.full(columns.shape[1], np.inf)
    high = np.full(columns.shape[1], -np.inf)
    for start in blocks:
        block = columns[start : start + STATS_BLOCK_ROWS].astype(np.float64)
        total += block.sum(axis=0)
        np.minimum(low, block.min(axis=0), out=low)
        np.maximum(high, block.max(axis=0), out=high)
    mean = total / n
    squares = np.zeros(columns.shape[1])
    for start in blocks:
        block = columns[start : start + STATS_BLOCK_ROWS].astype(np.float64)
        squares += ((block - mean) ** 2).sum(axis=0)
    return mean, np.sqrt(squares / n), low, high


def summarize(data: Dataset, *, max_features: int = 64, preview_rows: int = 5) -> dict[str, Any]:
    """Per-feature mean, std, min and max (the first `max_features` features of the flattened
    rows), a preview of the first rows, and the labels' meaning and distribution."""
    flat = data.x.reshape(data.rows, -1)
    shown = min(flat.shape[1], max_features)
    stats = column_stats(flat[:, :shown])
    names = data.feature_names or []
    features = [
        {
            "index": i,
            "name": names[i] if i < len(names) else None,
            "mean": mean,
            "std": std,
            "min": low,
            "max": high,
        }
        for i, (mean, std, low, high) in enumerate(zip(*map(_finite_floats, stats), strict=True))
    ]
    summary: dict[str, Any] = {
        "features_total": flat.shape[1],
        "features_shown": shown,
        "features": features,
        "preview": {
            "x": [_finite_floats(row) for row in flat[:preview_rows, :shown]],
            "y": None if data.y is None else data.y[:preview_rows].tolist(),
        },
        "labels": None,
    }
    if data.y is not None:
        labels: dict[str, Any] = {"meaning": data.labels, "type": data.label_type}
        if data.label_type == "class":
            values, counts = np.unique(data.y, return_counts=True)
            labels["counts"] = {str(v.item()): int(c) for v, c in zip(values, counts, strict=True)}
        else:
            y = data.y.astype(np.float64)
            labels.update(mean=float(y.mean()), std=float(y.std()), min=float(y.min()))
            labels["max"] = float(y.max())
        summary["labels"] = labels
    return summary
