"""What one call of `Trainer.fit` was given, where it has got to, and what it returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FitResult:
    epochs_run: int
    steps: int
    final_loss: float
    final_val_loss: float | None
    stopped_early: bool
    seconds: float
    samples_per_second: float
    history: dict[str, list[float]] = field(default_factory=dict)

    def summary(self, *, resumed: bool) -> dict[str, Any]:
        """What every gradient-trained kind reports of its training in the job's result."""
        return {
            "final_loss": self.final_loss,
            "final_val_loss": self.final_val_loss,
            "epochs": self.epochs_run,
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "resumed": resumed,
            "samples_per_second": self.samples_per_second,
            "train_seconds": self.seconds,
        }


@dataclass
class Run:
    """One call of `fit`: what it was given and where it has got to."""

    batch: int
    total_steps: int
    every: int  # the measuring interval
    step: int
    checkpoint_dir: Path | None
    save_weights: Callable[[Path], None] | None
    callbacks: list[Any]  # ml.core.training.Callback
    started: float = field(default_factory=time.perf_counter)
    seen: int = 0
    last_loss: float = float("nan")
    val_loss: float | None = None
    stopped_early: bool = False
    equilibrium: float | None = None  # the last measuring point's `equilibrium`
    due: bool = False  # a measurement fell on a partial batch: take it at the next full one
    history: dict[str, list[float]] = field(default_factory=lambda: {"loss": [], "val_loss": []})

    def result(self, epochs_run: int) -> FitResult:
        seconds = time.perf_counter() - self.started
        return FitResult(
            epochs_run=epochs_run,
            steps=self.step,
            final_loss=self.last_loss,
            final_val_loss=self.val_loss,
            stopped_early=self.stopped_early,
            seconds=seconds,
            samples_per_second=self.seen / seconds if seconds > 0 else float("nan"),
            history=self.history,
        )
