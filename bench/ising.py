"""Spin flips per second of the 2D Ising Metropolis kernels, side by side in one run.

- `thermoml`: the kind's kernel (checkerboard, int8 spins, threshold table, per-row xoshiro
  streams; rows in parallel from L = 128);
- `numba_per_spin`: a straightforward Numba kernel (typewriter sweep, acceptance table,
  `np.random.random()`), the reference the 2x target is measured against;
- `numpy_checkerboard`: the vectorised NumPy checkerboard with a lookup table;
- `python_per_spin`: a plain Python loop (small L only);
- `tensorflow`: the kind's `backend: tensorflow` (`ml.simulation.tf_backend.IsingLattice`: the two
  colours as L × L/2 arrays, tf.roll neighbour sums, stateless draws, one `tf.while_loop` per
  call), on the GPU when there is one.

All at T = T_c (J = 1, h = 0) after a warm-up; each figure is the median over repeats of
(L² × sweeps) / seconds. Compile (or graph tracing) time is excluded and reported separately.

    python bench/ising.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import table, write_report
from ml.simulation.ising import CRITICAL_TEMPERATURE
from ml.simulation.ising_kernels import lattice_sums, row_states, run_sweeps, thresholds
from ml.simulation.tf_backend import IsingLattice, device_name

TEMPERATURE = CRITICAL_TEMPERATURE


@numba.njit(cache=True)
def numba_per_spin(spins: np.ndarray, accept: np.ndarray, sweeps: int) -> int:
    """Typewriter Metropolis; accept[(s·n + 4)/2] = min(1, e^{−2 s n / T})."""
    size = spins.shape[0]
    flipped = 0
    for _ in range(sweeps):
        for i in range(size):
            for j in range(size):
                s = spins[i, j]
                n = (
                    spins[(i + 1) % size, j]
                    + spins[(i - 1) % size, j]
                    + spins[i, (j + 1) % size]
                    + spins[i, (j - 1) % size]
                )
                k = s * n
                if k <= 0 or np.random.random() < accept[(k + 4) // 2]:
                    spins[i, j] = -s
                    flipped += 1
    return flipped


def python_per_spin(spins: list[list[int]], accept: list[float], sweeps: int) -> None:
    size = len(spins)
    draw = random.Random(0).random
    for _ in range(sweeps):
        for i in range(size):
            up, row, down = spins[i - 1], spins[i], spins[(i + 1) % size]
            for j in range(size):
                s = row[j]
                k = s * (up[j] + down[j] + row[j - 1] + row[(j + 1) % size])
                if k <= 0 or draw() < accept[(k + 4) // 2]:
                    row[j] = -s


def numpy_checkerboard(spins: np.ndarray, accept: np.ndarray, sweeps: int) -> None:
    generator = np.random.default_rng(0)
    size = spins.shape[0]
    parity = np.add.outer(np.arange(size), np.arange(size)) % 2
    masks = [parity == 0, parity == 1]
    for _ in range(sweeps):
        for mask in masks:
            n = (
                np.roll(spins, 1, 0)
                + np.roll(spins, -1, 0)
                + np.roll(spins, 1, 1)
                + np.roll(spins, -1, 1)
            )
            k = spins * n
            flip = mask & (generator.random(spins.shape) < accept[(k + 4) // 2])
            spins[flip] *= -1


def acceptance() -> np.ndarray:
    return np.minimum(1.0, np.exp(-2.0 * np.arange(-4, 5, 2) / TEMPERATURE))


def time_kernel(
    name: str, size: int, sweeps: int, repeats: int, step: Callable[[int], object]
) -> dict[str, object]:
    start = time.perf_counter()
    step(1)  # warm-up (and compilation, when the cache is cold)
    warm_up = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(sweeps)
        rates.append(size * size * sweeps / (time.perf_counter() - start))
    return {
        "kernel": name,
        "L": size,
        "sweeps": sweeps,
        "median_mflips_s": statistics.median(rates) / 1e6,
        "min_mflips_s": min(rates) / 1e6,
        "max_mflips_s": max(rates) / 1e6,
        "first_call_s": warm_up,
    }


def bench_size(size: int, flips: float, repeats: int, slow_max_size: int) -> list[dict]:
    sweeps = max(2, math.ceil(flips / size**2))
    rng = np.random.default_rng(1)
    start = rng.choice(np.array([-1, 1], np.int8), size=(size, size))
    rows = []

    table_ = thresholds(TEMPERATURE, 1.0, 0.0)
    lattice, states = start.copy(), row_states(0, size)
    sums = list(lattice_sums(lattice))

    def thermoml(n: int) -> None:
        _, sums[0], sums[1] = run_sweeps(lattice, table_, states, sums[0], sums[1], n)

    rows.append(time_kernel("thermoml", size, sweeps, repeats, thermoml))
    reference = start.copy()
    accept = acceptance()
    rows.append(
        time_kernel(
            "numba_per_spin", size, sweeps, repeats, lambda n: numba_per_spin(reference, accept, n)
        )
    )
    slow = start.copy()
    rows.append(
        time_kernel(
            "numpy_checkerboard",
            size,
            max(1, sweeps // 20),
            repeats,
            lambda n: numpy_checkerboard(slow, accept, n),
        )
    )
    graph = IsingLattice(size, key=0)
    graph.load(start.copy())
    rows.append(
        time_kernel(
            "tensorflow",
            size,
            max(2, sweeps // 10),
            repeats,
            lambda n: graph.sweeps(table_, n),
        )
    )
    if size <= slow_max_size:
        nested = start.astype(int).tolist()
        accept_list = accept.tolist()
        rows.append(
            time_kernel(
                "python_per_spin",
                size,
                max(1, math.ceil(2e5 / size**2)),
                repeats,
                lambda n: python_per_spin(nested, accept_list, n),
            )
        )
    reference_rate = rows[1]["median_mflips_s"]
    for row in rows:
        row["vs_numba_per_spin"] = row["median_mflips_s"] / reference_rate  # type: ignore[operator]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    sizes = (16, 64) if args.quick else (64, 256, 1024)
    flips = 2e6 if args.quick else 1e8
    repeats = args.repeats or (3 if args.quick else 5)
    rows = [r for size in sizes for r in bench_size(size, flips, repeats, slow_max_size=64)]
    columns = ["kernel", "L", "sweeps", "median_mflips_s", "vs_numba_per_spin", "first_call_s"]
    print(
        f"2D Ising Metropolis at T = T_c, {numba.get_num_threads()} Numba threads, "
        f"TensorFlow on {device_name()}, median of {repeats} (M flips/s)"
    )
    print(table(rows, columns))
    path = write_report(
        "ising",
        {
            "temperature": TEMPERATURE,
            "threads": numba.get_num_threads(),
            "tensorflow_device": device_name(),
            "repeats": repeats,
            "quick": args.quick,
            "rows": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
