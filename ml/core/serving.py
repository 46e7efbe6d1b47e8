"""What a trained kind serves: a loaded model that answers named operations on arrays."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import DTypeLike

from ml.core.preprocessing import Scaler


class UnsupportedOperation(LookupError):
    def __init__(self, operation: str, serves: list[str]) -> None:
        super().__init__(f"this model does not serve {operation!r}; it serves {', '.join(serves)}")
        self.operation = operation
        self.serves = serves


class Servable(Protocol):
    """A loaded model. Inputs arrive in the data's raw units (preprocessing is the model's job)."""

    input_shape: tuple[int, ...]
    operations: list[str]

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        """Answer `operation`; arrays in the answer are NumPy arrays."""
        ...


class DrawsPictures(Protocol):
    """A servable whose kind declares pictures (`register_kind(pictures=...)`) also draws them:
    `GET /v1/models/{ref}/{name}.png` calls `picture(name)` and sends the PNG bytes."""

    def picture(self, name: str, **options: Any) -> bytes: ...


def calibrated_threshold(meta: dict[str, Any]) -> float:
    """The anomaly-score threshold calibrated at training (the models row's calibration);
    without one, +inf: no row is flagged."""
    return float((meta.get("calibration") or {}).get("threshold", math.inf))


def scores_of(servable: Any, rows: np.ndarray) -> np.ndarray:
    """A servable's `score` of `rows`, as float64."""
    return np.asarray(servable.run("score", rows)["scores"], np.float64)


def score_answer(scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """The `score` operation's answer: the scores, the threshold, and the rows over it."""
    return {"scores": scores, "threshold": threshold, "is_anomaly": scores > threshold}


class ScaledServable:
    """The part every servable of flattened rows shares: what it reads from the models row
    (input shape, operations, the scaler rows go through first) and the check of an operation.

    A subclass names the operations it can serve in `serves`, calls `super().__init__(meta)`
    and turns raw inputs into scaled vectors with `scaled`.
    """

    serves: ClassVar[tuple[str, ...]]

    def __init__(self, meta: dict[str, Any]) -> None:
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.operations = list(meta.get("capabilities") or self.serves)
        self.scaler = Scaler.from_dict(meta.get("preprocessing") or {"scale": "none"})

    def scaled(self, operation: str, inputs: np.ndarray | None, dtype: DTypeLike) -> np.ndarray:
        """`inputs` in `dtype`, scaled and flattened to vectors, for an operation it serves."""
        if operation not in self.operations or operation not in self.serves:
            raise UnsupportedOperation(operation, self.operations)
        assert inputs is not None
        rows: np.ndarray = np.asarray(inputs, dtype=dtype)
        return self.scaler.transform(rows).reshape(len(rows), -1)


class DrawsOnePicture:
    """A servable that draws one picture, named `drawing`: drawn by `draw` when first asked for,
    then answered from memory."""

    drawing: ClassVar[str]
    _drawn: bytes | None = None

    def draw(self) -> bytes:
        raise NotImplementedError

    def picture(self, name: str, **options: Any) -> bytes:
        if name != self.drawing:
            raise ValueError(f"no picture {name!r}; this model draws: {self.drawing}")
        if self._drawn is None:
            self._drawn = self.draw()
        return self._drawn


def png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes (the Agg backend: no display needed)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()
