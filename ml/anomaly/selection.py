"""An ensemble's choice of members on labelled rows it holds out of every member's fit.

A data set with labelled anomalies gives the ensemble more than its held-out normal rows: the
anomalies outside the evaluation rows, which no member fits (the members learn normal rows
only). Every non-empty subset of the members, combined as the ensemble combines them, is scored
on the held-out normal rows and those anomalies, and the subset with the highest ROC-AUC
serves; on a tie the smaller subset (fewer members to run), then the one whose members come
first (`members` in their order, then `models`); a subset whose combined score is not finite for
some row is never chosen. The
evaluation rows never enter the choice, so the ensemble's `roc_auc` stays an honest estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from scipy.stats import rankdata

MIN_ANOMALIES = 10  # fewer labelled anomalies: `auto` combines every member
MAX_ROWS = 5000  # of each class, a seeded sample: bounds the 2^members − 1 AUCs


@dataclass
class Choice:
    chosen: list[int]  # positions of the members that serve
    record: dict[str, Any]  # the job result's `selection`


def sample(indices: np.ndarray, seed: int) -> np.ndarray:
    """At most MAX_ROWS of `indices`, a seeded sample, in their order."""
    if len(indices) <= MAX_ROWS:
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, MAX_ROWS, replace=False))


def roc_aucs(normal: np.ndarray, anomalous: np.ndarray) -> np.ndarray:
    """ROC-AUC of each column (the Mann-Whitney statistic, ties counted half): normal rows
    (n, k) against anomalous rows (m, k)."""
    both = np.concatenate([normal, anomalous], axis=0)
    ranks = rankdata(both, axis=0)
    m, n = len(anomalous), len(normal)
    return np.asarray((ranks[n:].sum(axis=0) - m * (m + 1) / 2) / (m * n))


def choose(normal: np.ndarray, anomalous: np.ndarray, combine: str, names: list[str]) -> Choice:
    """The subset of members (columns of the standardised scores `normal`, `anomalous`) whose
    combination ranks the anomalies above the normal rows best."""
    count = normal.shape[1]
    subsets = [s for k in range(1, count + 1) for s in combinations(range(count), k)]
    fold = np.max if combine == "max" else np.mean
    combined_normal = np.stack([fold(normal[:, list(s)], axis=1) for s in subsets], axis=1)
    combined_anomalous = np.stack([fold(anomalous[:, list(s)], axis=1) for s in subsets], axis=1)
    # A subset with a non-finite score (a member's overflow) has no AUC: it is never chosen.
    aucs = roc_aucs(combined_normal, combined_anomalous)
    best = int(np.argmax(np.nan_to_num(aucs, nan=-np.inf)))  # the first maximum: small to large
    chosen = list(subsets[best])
    record = {
        "method": "labelled",
        "normal_rows": len(normal),
        "anomaly_rows": len(anomalous),
        "roc_auc": finite(aucs[best]),
        "all_members_roc_auc": finite(aucs[-1]),
        "candidates": [
            {"member": names[i], "roc_auc": finite(aucs[i]), "chosen": i in chosen}
            for i in range(count)
        ],
    }
    return Choice(chosen, record)


def finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def problem(selection: str, known_anomalies: int) -> str | None:
    """Why the members cannot be chosen (None: they can, or `selection` is `none`)."""
    if selection == "none":
        return "selection is none"
    if known_anomalies < MIN_ANOMALIES:
        return (
            f"{known_anomalies} labelled anomalies outside the evaluation rows, fewer than the "
            f"{MIN_ANOMALIES} a choice of members needs"
        )
    return None


def everyone(count: int, reason: str) -> Choice:
    return Choice(list(range(count)), {"method": "none", "reason": reason})
