"""What a running kind may tell the outside world, and how it stops early.

A kind receives a :class:`Reporter`; the worker implements it against the database. Every
report may raise :class:`JobCancelled` (the user asked) or :class:`JobFailed` (for example
the time limit), so a kind needs no cancellation logic of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ml.core.datasets import Dataset


class JobCancelled(Exception):
    """Raised from a report when the job's cancellation was requested."""


class JobFailed(Exception):
    """A failure with a job error code (`invalid_data`, `diverged`, `time_limit`, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Reporter(Protocol):
    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        """Record one point per name at `step` (idempotent on job, name, step)."""

    def progress(self, fraction: float, **info: Any) -> None:
        """Record progress in [0, 1] plus free-form details (epoch, step, ...)."""

    def checkpoint(self) -> None:
        """Persist the files in the run's `checkpoint_dir` (a later attempt resumes from them)."""


@dataclass
class RunContext:
    """What a run gets besides its spec: its data and its local folders.

    `checkpoint_dir` holds what the previous attempt saved with `reporter.checkpoint()` (empty
    on a first attempt); `workdir` is scratch space for this attempt (artifacts go there).
    """

    workdir: Path
    checkpoint_dir: Path
    dataset: Dataset | None = None
    models: list[RegisteredModel] = field(default_factory=list)  # the spec's `model_refs`


@dataclass
class RegisteredModel:
    """A registered model a job reads: its files, downloaded, and what its servable is loaded
    with (input shape, preprocessing, calibration, capabilities)."""

    id: str
    kind: str
    name: str
    files: dict[str, Path]
    meta: dict[str, Any]


@dataclass
class ModelOutcome:
    """A trained model: files under the run's `workdir` that the worker stores and registers."""

    files: dict[str, Path]  # logical name ("model", "preprocessing", ...) -> local file
    input_shape: list[int]
    capabilities: list[str]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    pictures: list[str] = field(default_factory=list)


# A job's `device` names the devices it ran on as TensorFlow does, comma-separated
# (`GPU:0,GPU:1`); work done on the host's processor, by any library, is `CPU:0`.
CPU = "CPU:0"


@dataclass
class RunOutcome:
    """What a finished run hands back to the worker."""

    result: dict[str, Any] = field(default_factory=dict)
    device: str = CPU
    model: ModelOutcome | None = None


@dataclass
class MemoryReporter:
    """A reporter that keeps everything in memory: for tests and in-process use."""

    points: dict[str, dict[int, float]] = field(default_factory=dict)
    fractions: list[float] = field(default_factory=list)

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self.points.setdefault(name, {})[step] = float(value)

    checkpoints: int = 0

    def progress(self, fraction: float, **info: Any) -> None:
        self.fractions.append(fraction)

    def checkpoint(self) -> None:
        self.checkpoints += 1

    def series(self, name: str) -> tuple[list[int], list[float]]:
        steps = sorted(self.points[name])
        return steps, [self.points[name][s] for s in steps]
