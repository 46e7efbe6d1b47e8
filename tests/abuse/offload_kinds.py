"""A test model whose work can be watched from another process, for the model-process tests.

`Echo` sleeps a fixed time per row or sample (its model row's `calibration.seconds_per_row`),
takes `calibration.child_load_seconds` (default 0) to load anywhere but in the test's process,
draws its samples from the request's random generator, and appends one line per call to the
file `calibration.log` names: the process id, the operation and the number of rows. Asked for
samples with the seed `DIE_SEED` it kills its own process, with `HANG_SEED` it never answers,
and with the sampler `"refused"` it refuses the options as a diffusion model does (ValueError).

It is a module-level class, so a model process imports it by name; the tests register the kind
in their own process only (the registry of the process that runs them is left as it was).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

DIE_SEED = 666
HANG_SEED = 667


class Echo:
    def __init__(self, files: Any, meta: dict[str, Any]) -> None:
        self.input_shape = (2,)
        self.operations = ["score", "generate"]
        self.log = Path(meta["calibration"]["log"])
        self.seconds_per_row = float(meta["calibration"]["seconds_per_row"])
        if os.getpid() != meta["calibration"].get("test_pid"):
            time.sleep(float(meta["calibration"].get("child_load_seconds", 0)))

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        rows = len(inputs) if inputs is not None else int(options["n"])
        with self.log.open("a") as log:
            log.write(f"{os.getpid()} {operation} {rows}\n")
        if options.get("seed") == DIE_SEED:
            os.kill(os.getpid(), signal.SIGKILL)
        if options.get("seed") == HANG_SEED:
            time.sleep(3600)
        if options.get("sampler") == "refused":
            raise ValueError("unknown sampler 'refused'")
        time.sleep(self.seconds_per_row * rows)
        if operation == "generate":
            rng = np.random.default_rng(options.get("seed"))
            return {"samples": rng.standard_normal((rows, 2)).astype(np.float32)}
        return {"scores": np.zeros(rows), "threshold": 1.0, "is_anomaly": np.zeros(rows, bool)}


def calls(log: Path) -> list[tuple[int, str, int]]:
    """(process id, operation, rows) of every call so far."""
    if not log.exists():
        return []
    return [
        (int(p), op, int(n))
        for p, op, n in (line.split() for line in log.read_text().split("\n") if line)
    ]
