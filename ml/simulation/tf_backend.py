"""TensorFlow kernels of the simulation kinds (`backend: tensorflow`), on whatever device the job
has: a GPU when there is one, else the CPU.

Only the stepping differs from the Numba/NumPy kernels: the kinds hand these the coefficients
they already computed and summarise what comes back with their own code. Continuous variables
are float64. Random numbers are stateless (Philox): the draws of step n come from the seed pair
(key, n), with the key derived from the job's seed, so a seed gives the same result on every run
and on any thread count. The steps between two recorded points run in one `tf.while_loop`.
Everything kept on the device is elementwise or an exact integer sum; floating-point sums over
walkers or paths are taken on the host, in a fixed order.

TensorFlow is imported here; import this module only inside a job's process.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, TypeAlias

import numpy as np
import tensorflow as tf

F64 = tf.float64
I64 = tf.int64
Tensor: TypeAlias = Any  # TensorFlow's tensors carry no static types


def stream_key(seed: int, *labels: int) -> int:
    """A 63-bit key for the stateless draws of one stream of a job."""
    word = np.random.SeedSequence([seed, *labels]).generate_state(1, np.uint64)[0]
    return int(word >> np.uint64(1))


def device_name() -> str:
    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def _seed(key: tf.Tensor, counter: tf.Tensor) -> tf.Tensor:
    return tf.stack([key, counter])


# --- langevin --------------------------------------------------------------------------------


@cache
def _langevin_kernel(mode: int, measure: bool) -> Callable[..., Any]:
    """n steps of x' = c1·x + c2·ξ (mode 0) or x + c1·x·(1 − c3·x²) + c2·ξ (mode 1)."""
    vector = tf.TensorSpec([None], F64)
    scalar = tf.TensorSpec([], F64)
    counter = tf.TensorSpec([], I64)

    @tf.function(input_signature=[vector] * 4 + [scalar] * 3 + [counter] * 3)
    def steps(
        x: Tensor,
        s1: Tensor,
        s2: Tensor,
        s4: Tensor,
        c1: Tensor,
        c2: Tensor,
        c3: Tensor,
        key: Tensor,
        start: Tensor,
        n: Tensor,
    ) -> tuple[Tensor, ...]:
        def body(i: Tensor, x: Tensor, s1: Tensor, s2: Tensor, s4: Tensor) -> tuple[Tensor, ...]:
            noise = tf.random.stateless_normal(tf.shape(x), _seed(key, start + i), dtype=F64)
            drift = c1 * x if mode == 0 else x + c1 * x * (1.0 - c3 * x * x)
            x = drift + c2 * noise
            if measure:
                xx = x * x
                s1, s2, s4 = s1 + x, s2 + xx, s4 + xx * xx
            return i + 1, x, s1, s2, s4

        zero = tf.constant(0, I64)
        _, x, s1, s2, s4 = tf.while_loop(lambda i, *_: i < n, body, (zero, x, s1, s2, s4))
        return x, s1, s2, s4

    return steps


class LangevinWalkers:
    """Walkers on the device, with per-walker Σx, Σx², Σx⁴ over the measured steps.

    `block_sums` adds those up over the same contiguous blocks of walkers as the Numba kernel's
    random streams, so the standard errors come from the same independent replicates.
    """

    def __init__(
        self,
        walkers: int,
        initial_position: float,
        coefficients: tuple[int, float, float, float],
        blocks: int,
        key: int,
    ) -> None:
        self.mode, *constants = coefficients
        self.c1, self.c2, self.c3 = (tf.constant(c, F64) for c in constants)
        self.x = tf.fill([walkers], tf.constant(initial_position, F64))
        self.sums = [tf.zeros([walkers], F64) for _ in range(3)]
        self.bounds = np.arange(blocks + 1) * walkers // blocks
        self.key = tf.constant(key, I64)
        self.step = 0
        self.device = device_name()

    def advance(self, n_steps: int, measure: bool) -> None:
        kernel = _langevin_kernel(self.mode, measure)
        self.x, *self.sums = kernel(
            self.x,
            *self.sums,
            self.c1,
            self.c2,
            self.c3,
            self.key,
            tf.constant(self.step, I64),
            tf.constant(n_steps, I64),
        )
        self.step += n_steps

    def positions(self) -> np.ndarray:
        return np.asarray(self.x.numpy())

    def block_sums(self) -> np.ndarray:
        per_walker = np.stack([s.numpy() for s in self.sums], axis=1)
        return np.stack(
            [
                per_walker[lo:hi].sum(axis=0)
                for lo, hi in zip(self.bounds[:-1], self.bounds[1:], strict=True)
            ]
        )


# --- ising -----------------------------------------------------------------------------------
#
# The lattice is kept as its two checkerboard colours, each L × L/2: a[i, k] = s[i, 2k + (i & 1)]
# and b[i, k] = s[i, 2k + 1 − (i & 1)]. A site's four neighbours all have the other colour: the
# same column k in rows i ± 1, and in its own row column k plus k − 1 or k + 1 by row parity.
# Spins and neighbour sums are small integers held exactly as float32: a GPU runs every op on
# them in device memory (TensorFlow keeps int32 arithmetic on the host), and sums are int64.

SPIN = tf.float32


def _neighbour_sum(other: tf.Tensor, shift_even: int, even_rows: tf.Tensor) -> tf.Tensor:
    vertical = tf.roll(other, 1, axis=0) + tf.roll(other, -1, axis=0)
    side = tf.where(even_rows, tf.roll(other, shift_even, axis=1), tf.roll(other, -shift_even, 1))
    return vertical + other + side


def _metropolis(
    spins: tf.Tensor, neighbours: tf.Tensor, accept: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """One colour's Metropolis update; accept[5·(s + 1)/2 + (n + 4)/2] = min(1, e^{−ΔE/T})."""
    index = tf.cast((spins + 1) * 2.5 + (neighbours + 4) * 0.5, I64)
    uniform = tf.random.stateless_uniform(tf.shape(spins), seed, dtype=F64)
    flip = uniform < tf.gather(accept, index)
    return tf.where(flip, -spins, spins), tf.reduce_sum(tf.cast(flip, I64))


@tf.function(
    input_signature=[
        tf.TensorSpec([None, None], SPIN),
        tf.TensorSpec([None, None], SPIN),
        tf.TensorSpec([10], F64),
        tf.TensorSpec([], I64),
        tf.TensorSpec([], I64),
        tf.TensorSpec([], tf.int32),
    ]
)
def _ising_sweeps(
    a: Tensor, b: Tensor, accept: Tensor, key: Tensor, start: Tensor, n: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """n sweeps; row k of the output is (−Σ_⟨ij⟩ s_i s_j, Σ s_i, flips) after sweep k."""
    even_rows = (tf.range(tf.shape(a)[0]) % 2 == 0)[:, None]

    def body(k: Tensor, a: Tensor, b: Tensor, out: Tensor) -> tuple[Any, ...]:
        counter = 2 * (start + tf.cast(k, I64))
        a, flips_a = _metropolis(a, _neighbour_sum(b, 1, even_rows), accept, _seed(key, counter))
        n_b = _neighbour_sum(a, -1, even_rows)
        b, flips_b = _metropolis(b, n_b, accept, _seed(key, counter + 1))
        bond = -tf.reduce_sum(tf.cast(b * n_b, I64))  # every bond joins b to a once
        magnet = tf.reduce_sum(tf.cast(a, I64)) + tf.reduce_sum(tf.cast(b, I64))
        return k + 1, a, b, out.write(k, tf.stack([bond, magnet, flips_a + flips_b]))

    out = tf.TensorArray(I64, size=n)
    _, a, b, out = tf.while_loop(lambda k, *_: k < n, body, (tf.constant(0), a, b, out))
    return a, b, out.stack()


class IsingLattice:
    """A periodic L×L lattice on the device, swept by checkerboard Metropolis."""

    def __init__(self, size: int, key: int) -> None:
        rows = np.arange(size)[:, None]
        columns = 2 * np.arange(size // 2)[None, :]
        self.columns = (columns + (rows & 1), columns + 1 - (rows & 1))
        self.rows = rows
        self.key = tf.constant(key, I64)
        self.sweep = 0
        self.device = device_name()

    def load(self, spins: np.ndarray) -> None:
        self.a, self.b = (tf.constant(spins[self.rows, c], SPIN) for c in self.columns)

    def spins(self) -> np.ndarray:
        size = self.rows.shape[0]
        out = np.empty((size, size), np.int8)
        for colour, c in zip((self.a, self.b), self.columns, strict=True):
            out[self.rows, c] = colour.numpy().astype(np.int8)
        return out

    def sweeps(self, table: np.ndarray, n: int) -> np.ndarray:
        """n sweeps with `ising_kernels.thresholds` (accept iff a 53-bit draw < t)."""
        accept = tf.constant(table.astype(np.float64) * 2.0**-53)
        self.a, self.b, out = _ising_sweeps(
            self.a, self.b, accept, self.key, tf.constant(self.sweep, I64), tf.constant(n)
        )
        self.sweep += n
        return np.asarray(out.numpy())


# --- jarzynski -------------------------------------------------------------------------------
#
# Step n (counted from 0) first changes λ_n → λ_{n+1} at fixed state, adding the work, then
# relaxes exactly at λ_{n+1} with the draws of seed (key, n + 1); the initial state uses (key, 0).

Record = Callable[[int, np.ndarray], None]
_PATH = tf.TensorSpec([None], F64)
_COUNTER = tf.TensorSpec([], I64)


def _work_steps(step: Callable[..., tuple[Tensor, Tensor]], constants: tuple[Any, ...]) -> Any:
    """n steps j = start, …, start + n − 1 of a protocol in one compiled loop, each
    `(state, work) = step(j, state, work, key, *values)` with `values` of specs `constants`."""

    @tf.function(input_signature=[_PATH, _PATH, _COUNTER, _COUNTER, _COUNTER, constants])
    def steps(
        state: Tensor, work: Tensor, key: Tensor, start: Tensor, n: Tensor, values: Any
    ) -> tuple[Tensor, Tensor]:
        def body(i: Tensor, state: Tensor, work: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return i + 1, *step(start + i, state, work, key, *values)

        zero = tf.constant(0, I64)
        _, state, work = tf.while_loop(lambda i, *_: i < n, body, (zero, state, work))
        return state, work

    return steps


def _harmonic_step(
    j: Tensor,
    x: Tensor,
    work: Tensor,
    key: Tensor,
    centers: Tensor,
    stiffnesses: Tensor,
    decay: Tensor,
    kick: Tensor,
) -> tuple[Tensor, Tensor]:
    """x' = c1 + a (x − c1) + kick·ξ after W += [k1 (x − c1)² − k0 (x − c0)²]/2."""
    c0, c1, k0, k1 = centers[j], centers[j + 1], stiffnesses[j], stiffnesses[j + 1]
    work += 0.5 * (k1 * (x - c1) ** 2 - k0 * (x - c0) ** 2)
    noise = tf.random.stateless_normal(tf.shape(x), _seed(key, j + 1), dtype=F64)
    return c1 + decay[j] * (x - c1) + kick[j] * noise, work


def _two_level_step(
    j: Tensor,
    upper: Tensor,
    work: Tensor,
    key: Tensor,
    levels: Tensor,
    targets: Tensor,
    decay: Tensor,
) -> tuple[Tensor, Tensor]:
    """W += u·(ε_{n+1} − ε_n), then the upper level is occupied with p' = P + (u − P)·decay."""
    work += upper * (levels[j + 1] - levels[j])
    target = targets[j + 1]
    draw = tf.random.stateless_uniform(tf.shape(upper), _seed(key, j + 1), dtype=F64)
    return tf.cast(draw < target + (upper - target) * decay, F64), work


_harmonic_steps = _work_steps(_harmonic_step, (_PATH,) * 4)
_two_level_steps = _work_steps(_two_level_step, (_PATH, _PATH, tf.TensorSpec([], F64)))


def _in_chunks(
    steps: int,
    every: int,
    record: Record | None,
    state: tuple[tf.Tensor, tf.Tensor],
    advance: Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]],
) -> np.ndarray:
    """Run `advance` to `steps`, calling record(n, work) at n = 0, every, 2·every, …, steps."""
    if record:
        record(0, state[1].numpy())
    done = 0
    while done < steps:
        n = min(every - done % every, steps - done) if record else steps - done
        state = advance(*state, tf.constant(done, I64), tf.constant(n, I64))
        done += n
        if record:
            record(done, state[1].numpy())
    return np.asarray(state[1].numpy())


def harmonic_work(
    centers: np.ndarray,
    stiffnesses: np.ndarray,
    *,
    step: float,
    friction: float,
    temperature: float,
    paths: int,
    key: int,
    every: int = 1,
    record: Record | None = None,
) -> np.ndarray:
    """Work on `paths` paths of a harmonic trap with centre and stiffness λ_n, n = 0..steps."""
    decay = np.exp(-stiffnesses[1:] * step / friction)
    kick = np.sqrt(temperature / stiffnesses[1:] * (1 - decay * decay))
    key_ = tf.constant(key, I64)
    noise = tf.random.stateless_normal([paths], _seed(key_, tf.constant(0, I64)), dtype=F64)
    x = float(centers[0]) + float(np.sqrt(temperature / stiffnesses[0])) * noise
    constants = tuple(tf.constant(a, F64) for a in (centers, stiffnesses, decay, kick))

    def advance(x: tf.Tensor, work: tf.Tensor, start: tf.Tensor, n: tf.Tensor) -> Any:
        return _harmonic_steps(x, work, key_, start, n, constants)

    return _in_chunks(len(decay), every, record, (x, tf.zeros([paths], F64)), advance)


def two_level_work(
    levels: np.ndarray,
    upper_probabilities: np.ndarray,
    *,
    decay: float,
    paths: int,
    key: int,
    every: int = 1,
    record: Record | None = None,
) -> np.ndarray:
    """Work on `paths` two-level systems whose upper level is ε_n, n = 0..steps; P_n is its
    equilibrium occupation, `decay` the relaxation factor of one step."""
    key_ = tf.constant(key, I64)
    draw = tf.random.stateless_uniform([paths], _seed(key_, tf.constant(0, I64)), dtype=F64)
    upper = tf.cast(draw < float(upper_probabilities[0]), F64)
    levels_, targets = (tf.constant(a, F64) for a in (levels, upper_probabilities))
    decay_ = tf.constant(decay, F64)

    def advance(upper: tf.Tensor, work: tf.Tensor, start: tf.Tensor, n: tf.Tensor) -> Any:
        return _two_level_steps(upper, work, key_, start, n, (levels_, targets, decay_))

    return _in_chunks(len(levels) - 1, every, record, (upper, tf.zeros([paths], F64)), advance)
