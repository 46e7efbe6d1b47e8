"""What a job will cost before it runs: parameters and peak memory, by pure arithmetic.

Each trained kind's spec says it (`JobSpec.size_estimate`) from its params and the data set's
shape; the service refuses at submit a job over `THERMOML_MAX_MODEL_PARAMS` or the job memory
budget, naming the field that costs the most. No TensorFlow here: the API imports this.

The layer formulas mirror the builders (`ml.core.networks`, `ml.generative.*_networks`);
`tests/ml/test_sizing.py` compares them with the built Keras models' `count_params()`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field

# A layer's width, channels or embedding size: 65 536 units is already a 4-billion-weight layer
# after another of its size, far past any model a worker trains; the parameter budget is the
# finer limit.
MAX_UNITS = 65_536
Width = Annotated[int, Field(ge=1, le=MAX_UNITS)]

FLOAT = 4  # bytes of a float32
# Copies of every weight alive in a training step: the weights, their gradient, Adam's two
# moments, the measuring step's summed and current micro-batch gradients, and the copy a
# checkpoint writes from.
WEIGHT_COPIES = 7
# Values kept per unit of a layer's output for each row of a batch: the output, its gradient and
# the pre-activation (or a dropout mask).
ACTIVATION_COPIES = 3
# Copies of the data set alive while a gradient-trained kind runs: the loaded array (float64 when
# parsed from text), the scaled float32 rows, the training split, an epoch's shuffled order and
# the tensor `tf.data` makes of it (float32 each; float64 counts two).
DATA_COPIES = 6
# A job process's memory before its work: Python, NumPy, TensorFlow and Keras imported and a
# first step traced, rounded up (measured: see the README's "Job sizes").
RUNTIME_BYTES = 1 << 30

CONV_DOWNSAMPLE = 4  # as ml.core.networks: two stride-2 convolutions


def use_conv(architecture: str, row_shape: Sequence[int]) -> bool:
    """As `ml.core.networks.use_conv` (which imports TensorFlow), without the error: the kind
    reports a shape that cannot take convolutions when it runs."""
    if architecture == "dense":
        return False
    return len(row_shape) == 3 and all(s % CONV_DOWNSAMPLE == 0 for s in row_shape[:2])


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(kernel: int, c_in: int, c_out: int) -> int:
    return kernel * kernel * c_in * c_out + c_out


def chain(n_in: int, widths: Sequence[int]) -> tuple[int, int]:
    """Parameters of Dense layers of `widths` after an input of `n_in`, and the last width."""
    total = 0
    for w in widths:
        total += dense(n_in, w)
        n_in = w
    return total, n_in


@dataclass
class SizeEstimate:
    """A job's parameters and peak memory (bytes), each split by the spec field that sets it
    (`params.hidden`, `training.batch_size`, `dataset`, ...; `runtime` for the fixed part)."""

    parameters: dict[str, int] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)

    def add_parameters(self, name: str, count: int) -> None:
        self.parameters[name] = self.parameters.get(name, 0) + int(count)

    def add_memory(self, name: str, size: int | float) -> None:
        self.memory[name] = self.memory.get(name, 0) + math.ceil(size)

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    @property
    def total_memory(self) -> int:
        return sum(self.memory.values())

    @staticmethod
    def costliest(part: dict[str, int]) -> str:
        """The field with the largest share of `part` (ties: the first named)."""
        return max(part, key=lambda k: part[k]) if part else "params"

    def as_dict(self) -> dict[str, int]:
        return {"parameters": self.total_parameters, "memory_bytes": self.total_memory}


def trained(
    estimate: SizeEstimate,
    *,
    rows: int,
    features: int,
    batch_size: int,
    widths: Sequence[int],
    weight_copies: int = WEIGHT_COPIES,
) -> SizeEstimate:
    """Add the memory of gradient training: the runtime, every weight's copies (by the field
    that sets them), a batch's activations through layers of `widths` and the data's copies."""
    estimate.add_memory("runtime", RUNTIME_BYTES)
    for name, count in list(estimate.parameters.items()):
        estimate.add_memory(name, count * FLOAT * weight_copies)
    batch = min(batch_size, rows)
    estimate.add_memory(
        "training.batch_size", batch * (features + sum(widths)) * FLOAT * ACTIVATION_COPIES
    )
    estimate.add_memory("dataset", rows * features * FLOAT * DATA_COPIES)
    return estimate


def clustered(
    *, rows: int, features: int, k: int, name: str, item: int, work_copies: int
) -> SizeEstimate:
    """A centroid kind: k × features weights (by `name`); memory: the runtime, the rows'
    copies and `work_copies` rows × k matrices of `item` bytes (distances, assignments)."""
    estimate = SizeEstimate()
    estimate.add_parameters(name, k * features)
    estimate.add_memory("runtime", RUNTIME_BYTES)
    estimate.add_memory("dataset", rows * features * FLOAT * DATA_COPIES)
    estimate.add_memory(name, work_copies * rows * k * item + k * features * FLOAT)
    return estimate
