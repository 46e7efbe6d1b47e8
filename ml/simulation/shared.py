"""What the simulation kinds share: how often they record a metric point and their parameter
checks."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

MAX_RECORDED_POINTS = 1000


def record_every_field(unit: str = "step", scope: str = "") -> Any:
    """The optional `record_every` parameter, counted in `unit`s (steps, sweeps)."""
    return Field(
        None,
        ge=1,
        description=f"Record every n-th {unit} (default: at most {MAX_RECORDED_POINTS} "
        f"points{scope}).",
    )


def recording_stride(total: int, record_every: int | None = None) -> int:
    """Record every n-th of `total` steps: `record_every`, else at most `MAX_RECORDED_POINTS`."""
    return record_every or max(1, math.ceil(total / MAX_RECORDED_POINTS))


def check_positive(params: BaseModel, names: tuple[str, ...]) -> None:
    """ValueError naming the first of these fields that is not positive."""
    for name in names:
        if getattr(params, name) <= 0:
            raise ValueError(f"{name} must be positive (got {getattr(params, name)})")
