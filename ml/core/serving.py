"""What a trained kind serves: a loaded model that answers named operations on arrays."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

OPERATIONS = ("encode", "reconstruct", "score", "generate", "predict")


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


def png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes (the Agg backend: no display needed)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()
