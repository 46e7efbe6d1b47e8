"""Deterministic annealing clustering (Rose 1998, Proc. IEEE 86:2210), mass-constrained, in
NumPy float64. See THERMODYNAMICS.md section C.

At temperature T the code vectors y with masses p(y) give the Gibbs assignment
p(y|x) = p(y) e^{−d(x,y)/T} / Z_x (d the squared distance); the fixed point alternates it with
p(y) = Σ_x p(x) p(y|x) and y = Σ_x p(x) p(y|x) x / p(y). Its free energy is
F* = −T Σ_x p(x) ln Z_x = D + T·I(X;Y). The schedule starts above the first critical
temperature 2 λ_max(Cov X), cools geometrically, duplicates every code vector with a small
random displacement at each temperature and merges those that fall back together: a cluster
splits where T drops below T_c = 2 λ_max(C_{x|y}), the covariance of the rows it holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.linalg import eigh
from threadpoolctl import threadpool_limits

# Code vectors whose mass falls below this are dropped (they hold no rows).
MASS_FLOOR = 1e-12
# Below this many multiply-adds per assignment step, BLAS runs on one thread: threads waiting on
# each other cost more than they save on small products (several times more on a busy machine).
SINGLE_THREAD_WORK = 2**26
MAX_TEMPERATURES = 10_000
# Fixed-point tolerance: the largest move of a code vector, relative to the data's spread.
TOLERANCE = 1e-5


@dataclass
class Codebook:
    """Code vectors `y` [k, d] and their masses `p` [k] (summing to 1)."""

    y: np.ndarray
    p: np.ndarray

    @property
    def k(self) -> int:
        return len(self.p)


@dataclass
class State:
    """The thermodynamics of a codebook at T (units: squared distance in the scaled space)."""

    temperature: float
    distortion: float  # D = Σ p(x) p(y|x) d
    entropy: float  # H(Y|X)
    mutual_information: float  # I(X;Y) = H(Y) − H(Y|X)
    free_energy: float  # F* = −T Σ p(x) ln Z_x
    n_clusters: int
    iterations: int


@dataclass
class PhaseTransition:
    temperature: float
    predicted_critical_temperature: float
    n_clusters_after: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "temperature": self.temperature,
            "predicted_critical_temperature": self.predicted_critical_temperature,
            "n_clusters_after": self.n_clusters_after,
        }


@dataclass
class Annealed:
    codebook: Codebook
    temperature: float
    states: list[State] = field(default_factory=list)
    transitions: list[PhaseTransition] = field(default_factory=list)
    first_critical_temperature: float = math.nan
    t_start: float = math.nan
    t_min: float = math.nan


def squared_distances(x: np.ndarray, y: np.ndarray, x2: np.ndarray | None = None) -> np.ndarray:
    """‖x − y‖² [n, k]; `x2` the rows' squared norms [n, 1], when already known."""
    d = x @ y.T
    d *= -2.0
    d += (x * x).sum(axis=1, keepdims=True) if x2 is None else x2
    d += (y * y).sum(axis=1)[None, :]
    return np.maximum(d, 0.0, out=d)


def gibbs(
    x: np.ndarray, book: Codebook, temperature: float, x2: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p(y|x) [n, k], ln Z_x [n] and the squared distances [n, k]."""
    d = squared_distances(x, book.y, x2)
    posterior = d * (-1.0 / temperature)
    posterior += np.log(book.p)[None, :]
    top = posterior.max(axis=1, keepdims=True)
    posterior -= top
    np.exp(posterior, out=posterior)
    total = posterior.sum(axis=1, keepdims=True)
    posterior /= total
    return posterior, (top + np.log(total))[:, 0], d


def update(x: np.ndarray, posterior: np.ndarray) -> Codebook:
    """The masses and centroids that go with an assignment (p(x) = 1/n)."""
    mass = posterior.mean(axis=0)
    y = (posterior.T @ x) / np.maximum(mass * len(x), MASS_FLOOR)[:, None]
    return Codebook(y, mass)


def fixed_point(
    x: np.ndarray, book: Codebook, temperature: float, tol: float, max_iter: int
) -> tuple[Codebook, int]:
    """Iterate assignment and centroid updates at T until no code vector moves more than `tol`."""
    x2 = (x * x).sum(axis=1, keepdims=True)
    for iteration in range(1, max_iter + 1):
        new = update(x, gibbs(x, book, temperature, x2)[0])
        moved = float(np.max(np.linalg.norm(new.y - book.y, axis=1)))
        book = new
        if moved < tol:
            return book, iteration
    return book, max_iter


def measure(x: np.ndarray, book: Codebook, temperature: float, iterations: int = 0) -> State:
    post, log_z, d = gibbs(x, book, temperature)
    # ln p(y|x) = ln p(y) − d/T − ln Z_x, exact where p(y|x) underflows to 0
    log_post = np.log(book.p)[None, :] - d / temperature - log_z[:, None]
    marginal = post.mean(axis=0)
    conditional = float(-(post * log_post).sum(axis=1).mean())
    positive = marginal[marginal > 0]
    h_y = float(-(positive * np.log(positive)).sum())
    return State(
        temperature=temperature,
        distortion=float((post * d).sum(axis=1).mean()),
        entropy=conditional,
        mutual_information=h_y - conditional,
        free_energy=float(-temperature * log_z.mean()),
        n_clusters=book.k,
        iterations=iterations,
    )


def critical_temperature(x: np.ndarray, weights: np.ndarray, centre: np.ndarray) -> float:
    """2 λ_max of the covariance of the rows around `centre`, weighted by p(x|y)."""
    w = weights / weights.sum()
    centred = x - centre[None, :]
    covariance = (centred * w[:, None]).T @ centred
    d = len(centre)
    top = eigh(covariance, eigvals_only=True, subset_by_index=[d - 1, d - 1])
    return float(2.0 * top[0])


def first_critical_temperature(x: np.ndarray) -> float:
    """2 λ_max(Cov X): where the single code vector at the data's mean becomes unstable."""
    return critical_temperature(x, np.ones(len(x)), x.mean(axis=0))


def _duplicate(
    x: np.ndarray,
    book: Codebook,
    temperature: float,
    room: int,
    step: float,
    rng: np.random.Generator,
) -> tuple[Codebook, np.ndarray]:
    """Each code vector plus a displaced copy sharing its mass (at most `room` copies: the
    least stable clusters first). Returns the new codebook and each vector's parent index."""
    chosen = np.arange(book.k)
    if room < book.k:
        post = gibbs(x, book, temperature)[0]
        critical = [critical_temperature(x, post[:, j], book.y[j]) for j in chosen]
        chosen = np.sort(np.argsort(critical)[::-1][:room])
    direction = rng.standard_normal((len(chosen), x.shape[1]))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    p = book.p.copy()
    p[chosen] /= 2.0
    y = np.concatenate([book.y, book.y[chosen] + step * direction])
    parents = np.concatenate([np.arange(book.k), chosen])
    return Codebook(y, np.concatenate([p, p[chosen]])), parents


def _merge(book: Codebook, parents: np.ndarray, radius: float) -> tuple[Codebook, np.ndarray]:
    """Merge code vectors closer than `radius` (mass-weighted) and drop massless ones."""
    keep_y: list[np.ndarray] = []
    keep_p: list[float] = []
    keep_parent: list[int] = []
    for j in range(book.k):
        if book.p[j] < MASS_FLOOR:
            continue
        for i, other in enumerate(keep_y):
            if np.linalg.norm(other - book.y[j]) < radius:
                total = keep_p[i] + book.p[j]
                keep_y[i] = (keep_p[i] * other + book.p[j] * book.y[j]) / total
                keep_p[i] = total
                break
        else:
            keep_y.append(book.y[j])
            keep_p.append(float(book.p[j]))
            keep_parent.append(int(parents[j]))
    p = np.asarray(keep_p)
    return Codebook(np.asarray(keep_y), p / p.sum()), np.asarray(keep_parent)


def anneal(
    x: np.ndarray,
    *,
    max_clusters: int,
    cooling_rate: float = 0.9,
    t_start: float | None = None,
    t_min: float | None = None,
    perturbation: float = 0.01,
    max_iter: int = 300,
    seed: int = 0,
    on_state: Callable[[int, State, Annealed], None] | None = None,
) -> Annealed:
    """Cool from `t_start` (default 1.05 × the first critical temperature) by `cooling_rate`
    until the next temperature would be below `t_min` (default 1e-3 × the first critical
    temperature); code vectors are duplicated only while there are fewer than `max_clusters`."""
    x = np.asarray(x, dtype=np.float64)
    small = x.size * 2 * max_clusters < SINGLE_THREAD_WORK
    with threadpool_limits(limits=1 if small else None, user_api="blas"):
        return _anneal(
            x, max_clusters, cooling_rate, t_start, t_min, perturbation, max_iter, seed, on_state
        )


def _anneal(
    x: np.ndarray,
    max_clusters: int,
    cooling_rate: float,
    t_start: float | None,
    t_min: float | None,
    perturbation: float,
    max_iter: int,
    seed: int,
    on_state: Callable[[int, State, Annealed], None] | None,
) -> Annealed:
    rng = np.random.default_rng(seed)
    spread = math.sqrt(float(np.mean(np.var(x, axis=0)))) or 1.0
    step, tol = perturbation * spread, TOLERANCE * spread
    # All rows equal (possible with max_clusters = 1): any positive temperature will do.
    t_first = max(first_critical_temperature(x), 1e-12)
    t = t_start if t_start is not None else 1.05 * t_first
    t_stop = t_min if t_min is not None else 1e-3 * t_first
    if t_stop < t and math.log(t_stop / t) / math.log(cooling_rate) > MAX_TEMPERATURES:
        raise ValueError(
            f"cooling from {t:.4g} to t_min = {t_stop:.4g} at cooling_rate {cooling_rate} takes "
            f"more than {MAX_TEMPERATURES} temperatures; raise t_min or lower cooling_rate"
        )
    book = Codebook(x.mean(axis=0, keepdims=True), np.ones(1))
    out = Annealed(book, t, first_critical_temperature=t_first, t_start=t, t_min=t_stop)
    settled_at = t  # the temperature `book` is a fixed point of
    index = 0
    while True:
        if book.k < max_clusters:
            trial, parents = _duplicate(x, book, t, max_clusters - book.k, step, rng)
        else:
            trial, parents = book, np.arange(book.k)
        trial, iterations = fixed_point(x, trial, t, tol, max_iter)
        merged, parents = _merge(trial, parents, step)
        if np.bincount(parents).max() > 1:
            _record_splits(x, out, book, settled_at, parents, t, merged.k)
        book, settled_at = merged, t
        last = t * cooling_rate < t_stop
        if last:  # the final state is a converged fixed point
            book, more = fixed_point(x, book, t, tol, max_iter)
            iterations += more
        state = measure(x, book, t, iterations)
        out.states.append(state)
        out.codebook, out.temperature = book, t
        if on_state is not None:
            on_state(index, state, out)
        if last:
            return out
        t *= cooling_rate
        index += 1


def _record_splits(
    x: np.ndarray,
    out: Annealed,
    before: Codebook,
    settled_at: float,
    parents: np.ndarray,
    temperature: float,
    n_after: int,
) -> None:
    """A transition for each code vector that left more than one survivor; its predicted T_c is
    2 λ_max(C_{x|y}) of the cluster at the last temperature before it split."""
    post = gibbs(x, before, settled_at)[0]
    counts = np.bincount(parents, minlength=before.k)
    for j in np.flatnonzero(counts > 1):
        predicted = critical_temperature(x, post[:, j], before.y[j])
        out.transitions.append(PhaseTransition(temperature, predicted, n_after))


def assignments(x: np.ndarray, book: Codebook, temperature: float) -> np.ndarray:
    """p(y|x) at T, [n, k]."""
    return gibbs(np.asarray(x, dtype=np.float64), book, temperature)[0]


def heat_capacity(before: State, after: State) -> float:
    """dD/dT between two consecutive temperatures (a finite difference)."""
    return (after.distortion - before.distortion) / (after.temperature - before.temperature)


def summary(result: Annealed) -> dict[str, Any]:
    return {
        "final_temperature": result.temperature,
        "first_critical_temperature": result.first_critical_temperature,
        "t_start": result.t_start,
        "temperatures": len(result.states),
        "n_clusters": result.codebook.k,
    }
