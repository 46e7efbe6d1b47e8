"""xoshiro256+ streams, the random numbers of the Numba kernels: seeding and one step."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import uint64


def xoshiro_states(entropy: int | list[int], streams: int) -> np.ndarray:
    """Independent xoshiro256 states from a seed sequence, one row of four words per stream."""
    states = np.random.SeedSequence(entropy).generate_state(4 * streams, np.uint64)
    states = states.reshape(streams, 4)
    states[np.all(states == 0, axis=1), 0] = 1  # the all-zero state is xoshiro's fixed point
    return states


@numba.njit(inline="always")
def xoshiro_next(s0: Any, s1: Any, s2: Any, s3: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(64-bit output, next state) of xoshiro256+; the state as four words the caller keeps
    (in registers, inlined into its loop)."""
    result = s0 + s3
    t = s1 << uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = (s3 << uint64(45)) | (s3 >> uint64(19))
    return result, s0, s1, s2, s3
