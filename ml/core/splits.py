"""Training, validation and evaluation splits, reproducible from `training.seed`.

The evaluation rows are drawn first, so changing `validation_split` never changes which rows
a model is evaluated on; each part's indices are sorted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    train: np.ndarray
    validation: np.ndarray
    evaluation: np.ndarray


def _check(n: int, validation_split: float, evaluation_split: float) -> None:
    for name, value in (
        ("validation_split", validation_split),
        ("evaluation_split", evaluation_split),
    ):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1); got {value}")
    if validation_split + evaluation_split >= 1.0:
        raise ValueError(
            f"validation_split + evaluation_split must leave rows to train on; got "
            f"{validation_split} + {evaluation_split}"
        )
    if n < 1:
        raise ValueError("cannot split zero rows")


def _counts(n: int, validation_split: float, evaluation_split: float) -> tuple[int, int]:
    n_eval = round(n * evaluation_split)
    n_val = round(n * validation_split)
    # A requested split gets at least one row when there is a row to spare for training.
    if evaluation_split > 0 and n_eval == 0 and n - n_val > 1:
        n_eval = 1
    if validation_split > 0 and n_val == 0 and n - n_eval > 1:
        n_val = 1
    if n - n_eval - n_val < 1:
        raise ValueError(
            f"{n} rows leave none to train on with validation_split={validation_split} and "
            f"evaluation_split={evaluation_split}"
        )
    return n_val, n_eval


def split_indices(
    n: int, validation_split: float = 0.0, evaluation_split: float = 0.0, seed: int = 0
) -> Split:
    """Disjoint index sets covering range(n); the same arguments give the same split."""
    _check(n, validation_split, evaluation_split)
    n_val, n_eval = _counts(n, validation_split, evaluation_split)
    order = np.random.default_rng(seed).permutation(n)
    evaluation = np.sort(order[:n_eval])
    validation = np.sort(order[n_eval : n_eval + n_val])
    train = np.sort(order[n_eval + n_val :])
    return Split(train, validation, evaluation)


def stratified_split_indices(
    y: np.ndarray, validation_split: float = 0.0, evaluation_split: float = 0.0, seed: int = 0
) -> Split:
    """As :func:`split_indices`, keeping each class's share in every part (up to rounding)."""
    labels = np.asarray(y).reshape(len(y), -1)[:, 0] if np.ndim(y) > 1 else np.asarray(y)
    n = len(labels)
    _check(n, validation_split, evaluation_split)
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        k = len(members)
        n_eval = round(k * evaluation_split)
        n_val = round(k * validation_split)
        if k - n_eval - n_val < 1:  # a tiny class keeps its rows for training
            n_eval = n_val = 0
        parts[2].append(members[:n_eval])
        parts[1].append(members[n_eval : n_eval + n_val])
        parts[0].append(members[n_eval + n_val :])
    train, validation, evaluation = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return Split(train, validation, evaluation)
