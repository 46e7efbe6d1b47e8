"""Walker-steps per second of the Langevin kernel against a plain NumPy Euler–Maruyama loop.

- `thermoml`: the kind's kernel (`ml.simulation.langevin_kernels.advance`: walkers in 64 blocks
  run in parallel, each with its own xoshiro256+ stream and a ziggurat for the normals),
  measuring Σx, Σx², Σx⁴ on the way as in the measured half of a job;
- `numpy_loop`: x += drift·h/γ + √(2Th/γ)·rng.standard_normal(n), one vectorised step at a time;
- `tensorflow`: the kind's `backend: tensorflow` (`ml.simulation.tf_backend.LangevinWalkers`:
  stateless normals, per-walker Σx, Σx², Σx⁴, one `tf.while_loop` per call), on the GPU when
  there is one.

Each figure is the median over repeats of (walkers × steps) / seconds; compile time excluded.

    python bench/langevin.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import table, write_report
from ml.simulation.langevin_kernels import RNG_BLOCKS, advance, seed_states
from ml.simulation.langevin_model import LangevinParams, coefficients
from ml.simulation.tf_backend import LangevinWalkers, device_name

CASES = {
    "harmonic/exact": {"potential": "harmonic", "integrator": "exact"},
    "harmonic/euler_maruyama": {"potential": "harmonic", "integrator": "euler_maruyama"},
    "double_well/euler_maruyama": {"potential": "double_well", "integrator": "euler_maruyama"},
}


def numpy_loop(p: LangevinParams, x: np.ndarray, steps: int, rng: np.random.Generator) -> None:
    h, gamma = p.dt, p.friction
    noise = math.sqrt(2 * p.temperature * h / gamma)
    d2 = p.well_distance**2
    for _ in range(steps):
        if p.potential == "harmonic":
            force = -p.stiffness * x
        else:
            force = -4 * p.barrier / d2 * x * (x * x / d2 - 1)
        x += force * (h / gamma) + noise * rng.standard_normal(x.shape[0])


def measure(
    name: str, case: str, walkers: int, steps: int, repeats: int, step: Callable[[int], None]
) -> dict[str, object]:
    start = time.perf_counter()
    step(1)
    first_call = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(steps)
        rates.append(walkers * steps / (time.perf_counter() - start))
    return {
        "kernel": name,
        "case": case,
        "walkers": walkers,
        "steps": steps,
        "median_msteps_s": statistics.median(rates) / 1e6,
        "min_msteps_s": min(rates) / 1e6,
        "max_msteps_s": max(rates) / 1e6,
        "first_call_s": first_call,
    }


def bench_case(case: str, walkers: int, work: float, repeats: int) -> list[dict]:
    p = LangevinParams.model_validate(CASES[case])
    steps = max(2, math.ceil(work / walkers))
    rows = []
    mode, c1, c2, c3 = coefficients(p)
    x, states, sums = np.zeros(walkers), seed_states(0, RNG_BLOCKS), np.zeros((RNG_BLOCKS, 3))

    def thermoml(n: int) -> None:
        advance(x, states, n, mode, c1, c2, c3, sums, True)

    rows.append(measure("thermoml", case, walkers, steps, repeats, thermoml))
    graph = LangevinWalkers(walkers, 0.0, (mode, c1, c2, c3), RNG_BLOCKS, key=0)

    def tensorflow(n: int) -> None:
        graph.advance(n, True)
        float(graph.x[0])  # waits for the device

    rows.append(measure("tensorflow", case, walkers, max(2, steps // 5), repeats, tensorflow))
    if p.integrator == "euler_maruyama":
        y, rng = np.zeros(walkers), np.random.default_rng(0)
        rows.append(
            measure(
                "numpy_loop",
                case,
                walkers,
                max(2, steps // 5),
                repeats,
                lambda n: numpy_loop(p, y, n, rng),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    sizes = (10_000,) if args.quick else (10_000, 1_000_000)
    work = 5e6 if args.quick else 2e8
    repeats = args.repeats or (3 if args.quick else 5)
    rows = [r for case in CASES for n in sizes for r in bench_case(case, n, work, repeats)]
    numpy_rates = {
        (r["case"], r["walkers"]): r["median_msteps_s"] for r in rows if r["kernel"] == "numpy_loop"
    }
    for r in rows:
        reference = numpy_rates.get((r["case"], r["walkers"]))
        if reference:  # the exact OU update has no NumPy loop to compare with
            r["vs_numpy_loop"] = r["median_msteps_s"] / reference  # type: ignore[operator]
    columns = ["kernel", "case", "walkers", "steps", "median_msteps_s", "vs_numpy_loop"]
    print(
        f"Overdamped Langevin, {numba.get_num_threads()} Numba threads, TensorFlow on "
        f"{device_name()}, median of {repeats} (M walker-steps/s)"
    )
    print(table(rows, columns))
    report = {
        "threads": numba.get_num_threads(),
        "tensorflow_device": device_name(),
        "repeats": repeats,
        "quick": args.quick,
    }
    path = write_report("langevin", {**report, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
