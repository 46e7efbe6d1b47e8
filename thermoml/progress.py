"""A job's progress on a terminal: a tqdm bar with elapsed time and ETA, the job's status, epoch
or step and up to three of its headline metrics. Where stderr is not a terminal (a log, a CI
job), a line at each change of status and at most every 5 s instead of a redrawn bar."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

# Shown next to the bar when the job records them, in this order (at most three).
KEY_METRICS = (
    "loss",
    "val_loss",
    "internal_energy",
    "free_energy",
    "temperature",
    "temperature_noise",
    "energy_per_spin",
    "mean_energy",
    "mean_work",
    "entropy_production",
    "heat",
)
LINE_EVERY = 5.0  # seconds between two progress lines when not on a terminal


def format_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    return f"{value:.4g}"


class JobProgress:
    """Feed it the job's events (`update(event, data)`); use it as a context manager."""

    def __init__(self, job: dict[str, Any], out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.status = str(job.get("status", "queued"))
        self.progress: dict[str, Any] = dict(job.get("progress") or {})
        self.latest: dict[str, float | None] = {}
        self.started = time.monotonic()
        self._last_line = -math.inf
        self._printed_status: str | None = None
        self.bar: tqdm[Any] | None = None
        if self.out.isatty():
            self.bar = tqdm(
                total=100.0,
                file=self.out,
                unit="%",
                bar_format="{percentage:5.1f}%|{bar:24}| [{elapsed}<{remaining}] {postfix}",
                dynamic_ncols=True,
            )
        self.draw(force=True)

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fraction(self) -> float:
        return max(0.0, min(1.0, float(self.progress.get("fraction") or 0.0)))

    def update(self, event: str, data: dict[str, Any]) -> None:
        if event in ("status", "end"):
            self.status = data["status"]
        elif event == "progress":
            self.progress = data
        elif event == "metrics":
            for name, series in data.get("series", {}).items():
                if series["values"]:
                    self.latest[name] = series["values"][-1]
        self.draw(force=event in ("status", "end"))

    def details(self) -> str:
        """Status, epoch or step, and the headline metrics."""
        parts = [self.status]
        p = self.progress
        if p.get("epoch") is not None:
            parts.append(f"epoch {p['epoch']}" + (f"/{p['epochs']}" if p.get("epochs") else ""))
        if p.get("step") is not None:
            total = f"/{p['total_steps']}" if p.get("total_steps") else ""
            parts.append(f"step {p['step']}{total}")
        shown = [n for n in KEY_METRICS if n in self.latest][:3]
        parts += [f"{n} {format_number(self.latest[n])}" for n in shown]
        return "  ".join(parts)

    def line(self) -> str:
        """The line written where there is no terminal."""
        elapsed = tqdm.format_interval(time.monotonic() - self.started)
        return f"{100 * self.fraction:5.1f}%  {elapsed}  {self.details()}"

    def draw(self, force: bool = False) -> None:
        if self.bar is not None:
            self.bar.n = round(100 * self.fraction, 1)
            self.bar.set_postfix_str(self.details(), refresh=False)
            self.bar.refresh()
            return
        now = time.monotonic()
        if (force and self._printed_status != self.status) or now - self._last_line >= LINE_EVERY:
            self._printed_status = self.status
            self._last_line = now
            print(self.line(), file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
