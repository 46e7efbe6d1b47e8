"""The data set every reader gives and every kind takes, and the error of unusable data.

Apart from `ml.core.datasets` (the built-ins and summaries) and `ml.core.loaders` (the readers
of uploaded files), so that neither of those needs the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

LabelType = Literal["class", "continuous"]


class DataError(ValueError):
    """Data that cannot be used as given; the message says what to fix."""


class DataTooLarge(DataError):
    """Data that decodes to more than the limit allows (`decoded` and `limit` in bytes)."""

    def __init__(self, decoded: int, limit: int) -> None:
        super().__init__(
            f"the data set decodes to {decoded} bytes of arrays, more than the limit of {limit} "
            "bytes; upload fewer rows or columns, or float32 instead of float64"
        )
        self.decoded, self.limit = decoded, limit


@dataclass
class Dataset:
    """Rows `x` (float32 or float64, shape (rows, *feature_shape)) and optional labels `y`."""

    x: np.ndarray
    y: np.ndarray | None = None
    name: str = ""
    description: str = ""
    labels: str | None = None  # what y means, for people
    label_type: LabelType | None = None
    feature_names: list[str] | None = field(default=None, repr=False)
    anomaly_label: int | None = None  # the label value of the anomaly class, if one is

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def features(self) -> int:
        return int(np.prod(self.feature_shape, dtype=np.int64))

    @property
    def shape(self) -> list[int]:
        return [int(d) for d in self.x.shape]

    @property
    def dtype(self) -> str:
        return str(self.x.dtype)
