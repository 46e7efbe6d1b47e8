"""Input scaling, fitted on the training split and stored with the model.

A fitted :class:`Scaler` maps raw inputs x to z = (x - offset) / scale. Its `to_dict()` is
JSON-safe and goes into the models row's `preprocessing` column; inference rebuilds it with
`from_dict()`, so clients send raw rows. Densities change units with the transform:
-log p_x(x) = -log p_z(z) + Σ ln|scale_i|, which is what `log_abs_det_jacobian()` returns (a
diffusion model reports bits/dim in the data's own units with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.core.spec import Preprocessing, ScaleName

METHODS: tuple[ScaleName, ...] = ("minmax", "standard", "none")


class NotFitted(RuntimeError):
    """`transform` before `fit`."""


@dataclass
class Scaler:
    """z = (x - offset) / scale, per feature or with one offset and scale for all values.

    `per_feature=None` chooses: per feature for tables (rows of rank 1), one for all values of
    images (rows of rank 2 and up), where per-pixel scaling would blow up rare pixels.
    Constant features get scale 1, so they map to 0 instead of dividing by zero.
    """

    method: ScaleName = "standard"
    per_feature: bool | None = None
    offset: np.ndarray | None = field(default=None, repr=False)
    scale: np.ndarray | None = field(default=None, repr=False)
    feature_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown scale {self.method!r}; use one of {', '.join(METHODS)}")

    @classmethod
    def from_spec(cls, spec: Preprocessing) -> Scaler:
        return cls(method=spec.scale, per_feature=spec.per_feature)

    @property
    def fitted(self) -> bool:
        return self.feature_shape is not None

    def fit(self, x: np.ndarray) -> Scaler:
        """Fit on rows `x` (the training split only); returns self."""
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError("cannot fit a scaler on zero rows")
        rows = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
        feature_shape = tuple(int(d) for d in x.shape[1:])
        per_feature = self.per_feature if self.per_feature is not None else x.ndim <= 2
        axis = 0 if per_feature else None
        work = rows.astype(np.float64, copy=False)
        if self.method == "minmax":
            low, high = work.min(axis=axis), work.max(axis=axis)
            offset, scale = low, high - low
        elif self.method == "standard":
            offset, scale = work.mean(axis=axis), work.std(axis=axis)
        else:
            offset, scale = np.zeros(()), np.ones(())
        scale = np.where(np.asarray(scale) > 0, scale, 1.0)
        shape = feature_shape if per_feature and self.method != "none" else ()
        self.offset = np.asarray(offset, dtype=np.float64).reshape(shape)
        self.scale = np.asarray(scale, dtype=np.float64).reshape(shape)
        self.per_feature = per_feature
        self.feature_shape = feature_shape
        return self

    def _check(self, x: np.ndarray) -> None:
        if not self.fitted:
            raise NotFitted("the scaler is not fitted; call fit() on the training split first")
        if tuple(x.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"rows of shape {list(x.shape[1:])} do not match the fitted shape "
                f"{list(self.feature_shape or ())}"
            )

    @property
    def identity(self) -> bool:
        """`none`: transform and inverse are the identity, fitted or not."""
        return self.method == "none"

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Scaled rows, in x's floating dtype (float32 stays float32)."""
        return self._apply(x, lambda v, offset, scale: (v - offset) / scale)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """Rows back in the data's own units."""
        return self._apply(z, lambda v, offset, scale: v * scale + offset)

    def _apply(self, x: Any, fn: Any) -> np.ndarray:
        x = np.asarray(x)
        if self.identity and not self.fitted:
            return x
        self._check(x)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        assert self.offset is not None and self.scale is not None
        return np.asarray(fn(x, self.offset, self.scale)).astype(dtype, copy=False)

    def log_abs_det_jacobian(self) -> float:
        """Σ ln|scale_i| over every feature of one row (0 for `none`)."""
        if self.identity:
            return 0.0
        if not self.fitted:
            raise NotFitted("the scaler is not fitted")
        assert self.scale is not None and self.feature_shape is not None
        full = np.broadcast_to(self.scale, self.feature_shape)
        return float(np.sum(np.log(np.abs(full))))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the models row's `preprocessing` column."""
        if not self.fitted:
            return {"scale": self.method, "per_feature": self.per_feature}
        assert self.offset is not None and self.scale is not None
        return {
            "scale": self.method,
            "per_feature": self.per_feature,
            "feature_shape": list(self.feature_shape or ()),
            "offset": self.offset.tolist(),
            "factor": self.scale.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaler:
        scaler = cls(method=data.get("scale", "none"), per_feature=data.get("per_feature"))
        if "feature_shape" in data:
            scaler.feature_shape = tuple(int(d) for d in data["feature_shape"])
            scaler.offset = np.asarray(data["offset"], dtype=np.float64)
            scaler.scale = np.asarray(data["factor"], dtype=np.float64)
        return scaler
