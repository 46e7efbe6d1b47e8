"""The work done on many paths of a Jarzynski protocol: vectorised over paths in NumPy, or the
same steps in TensorFlow (`ml.simulation.tf_backend`, imported only when asked for)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ml.simulation.jarzynski_model import JarzynskiParams, Schedule, upper_probability


def simulate(
    p: JarzynskiParams,
    s: Schedule,
    rng: np.random.Generator,
    record: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Work of every path; calls record(n, work) at n = 0 and after each step."""
    work = np.zeros(p.paths)
    h, t = p.step, p.temperature
    if record:
        record(0, work)
    if p.protocol == "landauer":
        decay = math.exp(-h * p.stiffness / p.friction)
        upper = rng.random(p.paths) < upper_probability(p, s.levels[0])
        for n in range(p.steps):
            work += upper * (s.levels[n + 1] - s.levels[n])
            target = upper_probability(p, s.levels[n + 1])
            upper = rng.random(p.paths) < target + (upper - target) * decay
            if record:
                record(n + 1, work)
        return work
    x = s.centers[0] + math.sqrt(t / s.stiffnesses[0]) * rng.standard_normal(p.paths)
    noise = np.empty(p.paths)
    for n in range(p.steps):
        k0, k1 = s.stiffnesses[n], s.stiffnesses[n + 1]
        c0, c1 = s.centers[n], s.centers[n + 1]
        work += 0.5 * (k1 * (x - c1) ** 2 - k0 * (x - c0) ** 2)
        a = math.exp(-k1 * h / p.friction)
        rng.standard_normal(out=noise)
        x = c1 + a * (x - c1) + math.sqrt(t / k1 * (1 - a * a)) * noise
        if record:
            record(n + 1, work)
    return work


def simulate_tf(
    p: JarzynskiParams,
    s: Schedule,
    stream: int,
    record: Callable[[int, np.ndarray], None] | None = None,
    every: int = 1,
) -> np.ndarray:
    """What :func:`simulate` does, in TensorFlow, with the draws of the seed's `stream`;
    calls record(n, work) at n = 0, every, 2·every, …, steps."""
    from ml.simulation import tf_backend

    key = tf_backend.stream_key(p.seed, stream)
    if p.protocol == "landauer":
        return tf_backend.two_level_work(
            s.levels,
            upper_probability(p, s.levels),
            decay=math.exp(-p.step * p.stiffness / p.friction),
            paths=p.paths,
            key=key,
            every=every,
            record=record,
        )
    return tf_backend.harmonic_work(
        s.centers,
        s.stiffnesses,
        step=p.step,
        friction=p.friction,
        temperature=p.temperature,
        paths=p.paths,
        key=key,
        every=every,
        record=record,
    )
