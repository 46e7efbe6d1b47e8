"""The Numba kernel of the Ising kind: checkerboard Metropolis on an int8 lattice.

The kernel looks the acceptance thresholds up in a table of ten entries (one per spin and
neighbour sum), draws one xoshiro256+ number per site from a stream owned by the site's row (so
rows run in parallel and the chain does not depend on the thread count), and tracks energy and
magnetisation exactly as integers from the accepted flips.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numba
import numpy as np
from numba import uint64

from ml.core.reporting import CPU
from ml.simulation.xoshiro import xoshiro_next, xoshiro_states

PARALLEL_MIN_SIZE = 128  # below this a parallel region costs more than the half-sweep it runs
_ALWAYS = 1 << 53


def thresholds(temperature: float, coupling: float, field: float) -> np.ndarray:
    """Acceptance thresholds t, accept iff a 53-bit uniform integer < t (t = 2^53: always).

    Index ((s + 1) / 2)·5 + (n + 4)/2 for spin s and neighbour sum n; ΔE = 2 s (J n + h).
    """
    table = np.empty(10, np.uint64)
    for i, spin in enumerate((-1, 1)):
        for k, neighbours in enumerate((-4, -2, 0, 2, 4)):
            delta = 2 * spin * (coupling * neighbours + field)
            accept = math.exp(-delta / temperature) if delta > 0 else 1.0
            table[5 * i + k] = _ALWAYS if accept >= 1.0 else int(accept * 2.0**53)
    return table


@numba.njit(inline="always")
def _update_row(
    spins: np.ndarray, i: int, color: int, table: np.ndarray, states: np.ndarray
) -> tuple[Any, Any, Any]:
    """Metropolis on the sites of one colour in row i; returns (Δbond, Δmagnet, accepted)."""
    size = spins.shape[0]
    row = spins[i]
    up = spins[i - 1 if i > 0 else size - 1]
    down = spins[i + 1 if i < size - 1 else 0]
    s0, s1, s2, s3 = states[i, 0], states[i, 1], states[i, 2], states[i, 3]
    d_bond = d_magnet = accepted = np.int64(0)
    for j in range((i + color) & 1, size, 2):
        s = np.int64(row[j])
        left = row[j - 1 if j > 0 else size - 1]
        right = row[j + 1 if j < size - 1 else 0]
        n = np.int64(up[j]) + np.int64(down[j]) + np.int64(left) + np.int64(right)
        r, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)  # every site: no unpredictable branch
        flip = np.int64((r >> uint64(11)) < table[((s + 1) >> 1) * 5 + ((n + 4) >> 1)])
        row[j] = s * (1 - 2 * flip)
        d_bond += 2 * s * n * flip
        d_magnet -= 2 * s * flip
        accepted += flip
    states[i, 0], states[i, 1], states[i, 2], states[i, 3] = s0, s1, s2, s3
    return d_bond, d_magnet, accepted


@numba.njit(cache=True)
def sweeps_serial(
    spins: np.ndarray,
    table: np.ndarray,
    states: np.ndarray,
    bond: int,
    magnet: int,
    out: np.ndarray,
) -> tuple[int, int]:
    """len(out) sweeps; out[k] = (bond, magnet, accepted) after sweep k. See `sweeps_parallel`."""
    for k in range(out.shape[0]):
        accepted = 0
        for color in range(2):
            for i in range(spins.shape[0]):
                db, dm, da = _update_row(spins, i, color, table, states)
                bond += db
                magnet += dm
                accepted += da
        out[k, 0], out[k, 1], out[k, 2] = bond, magnet, accepted
    return bond, magnet


@numba.njit(parallel=True, cache=True)
def sweeps_parallel(
    spins: np.ndarray,
    table: np.ndarray,
    states: np.ndarray,
    bond: int,
    magnet: int,
    out: np.ndarray,
) -> tuple[int, int]:
    """len(out) sweeps, rows of one colour in parallel; the same chain as `sweeps_serial`.

    bond = −Σ_⟨ij⟩ s_i s_j and magnet = Σ s_i on entry, updated from the accepted flips.
    """
    size = spins.shape[0]
    deltas = np.zeros((size, 3), np.int64)
    for k in range(out.shape[0]):
        for color in range(2):
            for i in numba.prange(size):
                db, dm, da = _update_row(spins, i, color, table, states)
                deltas[i, 0] += db
                deltas[i, 1] += dm
                deltas[i, 2] += da
        total = deltas.sum(axis=0)
        bond += total[0]
        magnet += total[1]
        out[k, 0], out[k, 1], out[k, 2] = bond, magnet, total[2]
        deltas[:] = 0
    return bond, magnet


def run_sweeps(
    spins: np.ndarray, table: np.ndarray, states: np.ndarray, bond: int, magnet: int, n: int
) -> tuple[np.ndarray, int, int]:
    """n sweeps; returns the per-sweep (bond, magnet, accepted) and the final bond and magnet."""
    out = np.empty((n, 3), np.int64)
    kernel = sweeps_parallel if spins.shape[0] >= PARALLEL_MIN_SIZE else sweeps_serial
    bond, magnet = kernel(spins, table, states, bond, magnet, out)
    return out, int(bond), int(magnet)


class Lattice(Protocol):
    """A backend's lattice: `load` a configuration, then sweep it."""

    device: str

    def load(self, spins: np.ndarray) -> None: ...

    def sweeps(self, table: np.ndarray, n: int) -> np.ndarray:
        """n sweeps at these thresholds; the per-sweep (bond, magnet, accepted), int64."""
        ...


class NumbaLattice:
    """The lattice of the `numba` backend: int8 spins swept by :func:`run_sweeps`."""

    device = CPU

    def __init__(self, seed: int, size: int) -> None:
        self.states = row_states(seed, size)

    def load(self, spins: np.ndarray) -> None:
        self.spins = spins
        self.bond, self.magnet = lattice_sums(spins)

    def sweeps(self, table: np.ndarray, n: int) -> np.ndarray:
        out, self.bond, self.magnet = run_sweeps(
            self.spins, table, self.states, self.bond, self.magnet, n
        )
        return out


def lattice_sums(spins: np.ndarray) -> tuple[int, int]:
    """(−Σ_⟨ij⟩ s_i s_j, Σ s_i) of a periodic lattice."""
    s = spins.astype(np.int64)
    pairs = (s * np.roll(s, 1, axis=0)).sum() + (s * np.roll(s, 1, axis=1)).sum()
    return int(-pairs), int(s.sum())


def row_states(seed: int, size: int) -> np.ndarray:
    """One xoshiro256 stream per row of the lattice."""
    return xoshiro_states([seed, 1], size)
