"""The stepping of the Langevin walkers: a parallel Numba kernel over blocks of walkers, each
block with its own xoshiro256+ stream of Marsaglia–Tsang ziggurat normals, and the walkers of
either backend (`ml.simulation.tf_backend` for `tensorflow`)."""

from __future__ import annotations

import math
from typing import Any, Protocol

import numba
import numpy as np
from numba import uint64

from ml.core.reporting import CPU
from ml.simulation.langevin_model import LangevinParams, coefficients
from ml.simulation.xoshiro import xoshiro_next, xoshiro_states

RNG_BLOCKS = 64
TF_STREAM = 1  # the label of the walkers' stateless stream, see `tf_backend.stream_key`


# --- random numbers: xoshiro256+ streams and Marsaglia–Tsang's 256-layer ziggurat -------------


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy's 52-bit tables for the standard normal (Marsaglia & Tsang 2000)."""
    scale = 2.0**52
    dn = tn = 3.6541528853610088
    vn = 0.00492867323399
    ki = np.zeros(256, np.uint64)
    wi = np.zeros(256)
    fi = np.zeros(256)
    q = vn / math.exp(-0.5 * dn * dn)
    ki[0] = int(dn / q * scale)
    wi[0], wi[255] = q / scale, dn / scale
    fi[0], fi[255] = 1.0, math.exp(-0.5 * dn * dn)
    for i in range(254, 0, -1):
        dn = math.sqrt(-2.0 * math.log(vn / dn + math.exp(-0.5 * dn * dn)))
        ki[i + 1] = int(dn / tn * scale)
        tn = dn
        fi[i] = math.exp(-0.5 * dn * dn)
        wi[i] = dn / scale
    return ki, wi, fi


_KI, _WI, _FI = _ziggurat_tables()
_ZIGGURAT_R = 3.6541528853610088


def seed_states(seed: int, streams: int) -> np.ndarray:
    """Independent xoshiro256 states, one row of four words per stream."""
    return xoshiro_states(seed, streams)


@numba.njit(inline="always")
def _next(st: np.ndarray) -> Any:
    result, st[0], st[1], st[2], st[3] = xoshiro_next(st[0], st[1], st[2], st[3])
    return result


@numba.njit(inline="always")
def _uniform(st: np.ndarray) -> float:
    return (_next(st) >> uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always")
def _normal(st: np.ndarray) -> float:
    while True:
        r = _next(st)
        idx = np.int64(r & uint64(0xFF))
        r >>= uint64(8)
        rabs = (r >> uint64(1)) & uint64(0x000FFFFFFFFFFFFF)
        x = rabs * _WI[idx]
        if r & uint64(1):
            x = -x
        if rabs < _KI[idx]:
            return x  # 99.3% of draws
        if idx == 0:  # the tail beyond R
            while True:
                xx = -np.log1p(-_uniform(st)) / _ZIGGURAT_R
                yy = -np.log1p(-_uniform(st))
                if yy + yy > xx * xx:
                    return (
                        -(_ZIGGURAT_R + xx) if (rabs >> uint64(8)) & uint64(1) else _ZIGGURAT_R + xx
                    )
        elif (_FI[idx - 1] - _FI[idx]) * _uniform(st) + _FI[idx] < np.exp(-0.5 * x * x):
            return x


@numba.njit(parallel=True, cache=True)
def advance(
    x: np.ndarray,
    states: np.ndarray,
    n_steps: int,
    mode: int,
    c1: float,
    c2: float,
    c3: float,
    sums: np.ndarray,
    measure: bool,
) -> None:
    """Move every walker `n_steps`; when `measure`, add Σx, Σx², Σx⁴ per block to `sums`.

    mode 0: x' = c1·x + c2·ξ (exact OU or Euler–Maruyama in the harmonic well);
    mode 1: x' = x + c1·x·(1 − c3·x²) + c2·ξ (Euler–Maruyama in the double well).
    """
    n = x.shape[0]
    blocks = states.shape[0]
    for b in numba.prange(blocks):
        st = states[b].copy()
        s1 = s2 = s4 = 0.0
        for i in range(b * n // blocks, (b + 1) * n // blocks):
            xi = x[i]
            for _ in range(n_steps):
                g = _normal(st)
                drift = c1 * xi if mode == 0 else xi + c1 * xi * (1.0 - c3 * xi * xi)
                xi = drift + c2 * g
                if measure:
                    xx = xi * xi
                    s1 += xi
                    s2 += xx
                    s4 += xx * xx
            x[i] = xi
        states[b] = st
        sums[b, 0] += s1
        sums[b, 1] += s2
        sums[b, 2] += s4


class Walkers(Protocol):
    """A backend's walkers: positions, and Σx, Σx², Σx⁴ per block over the measured steps."""

    device: str

    def advance(self, n_steps: int, measure: bool) -> None: ...

    def positions(self) -> np.ndarray: ...

    def block_sums(self) -> np.ndarray: ...


class NumbaWalkers:
    """The walkers of the `numba` backend, moved by :func:`advance`."""

    device = CPU

    def __init__(self, p: LangevinParams) -> None:
        self.coefficients = coefficients(p)
        self.x = np.full(p.walkers, p.initial_position, dtype=np.float64)
        self.states = seed_states(p.seed, RNG_BLOCKS)
        self.sums = np.zeros((RNG_BLOCKS, 3))

    def advance(self, n_steps: int, measure: bool) -> None:
        advance(self.x, self.states, n_steps, *self.coefficients, self.sums, measure)

    def positions(self) -> np.ndarray:
        return self.x

    def block_sums(self) -> np.ndarray:
        return self.sums


def walkers_for(p: LangevinParams) -> Walkers:
    """The walkers of `p.backend`, at `initial_position`."""
    if p.backend == "numba":
        return NumbaWalkers(p)
    from ml.simulation.tf_backend import LangevinWalkers, stream_key

    key = stream_key(p.seed, TF_STREAM)
    return LangevinWalkers(p.walkers, p.initial_position, coefficients(p), RNG_BLOCKS, key)
