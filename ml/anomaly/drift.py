"""Drift: whether incoming rows come from the distribution a model was trained on, answered by
two-sample tests against the reference sample every model that serves `score` keeps (up to
`REFERENCE_ROWS` of its preprocessed training rows, drawn with the job's seed).

- Kernel MMD (Gretton et al. 2012), as Alibi Detect's `MMDDrift` with its kernel configured on
  the pooled sample: the unbiased MMD² of the incoming rows x (n of them) and the reference y
  (m), with the Gaussian RBF kernel k(a, b) = exp(−‖a − b‖² / (2σ²)) whose σ² is half the median
  squared distance of the pooled rows (the median heuristic: k = exp(−‖a − b‖² / median)). Its
  p-value comes from B permutations of the pooled rows' labels on one pooled kernel matrix,
  (1 + #{MMD²_b ≥ MMD²}) / (B + 1): never 0, and P(p ≤ α) ≤ α exactly under no drift (Alibi
  counts without the 1s). At most `MMD_ROWS` incoming rows enter the MMD (a seeded subsample
  beyond): the pooled matrix holds at most (MMD_ROWS + REFERENCE_ROWS)² values.
- Per feature, the two-sample Kolmogorov–Smirnov test on every incoming row, its p-values
  adjusted for the false-discovery rate (Benjamini–Hochberg).

The distances, kernel and permutation sums are TensorFlow's, in row blocks, in float64;
TensorFlow is imported when a test runs, never with this module (a kind's module imports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.core.preprocessing import Scaler
from ml.core.reporting import ModelOutcome
from ml.core.serving import UnsupportedOperation

REFERENCE = "drift_reference"  # the file's key among the model's files
REFERENCE_FILE = "drift_reference.npy"
REFERENCE_ROWS = 1000
MMD_ROWS = 2000  # incoming rows the MMD uses at most
DEFAULT_PERMUTATIONS = 100
MAX_PERMUTATIONS = 1000
DEFAULT_ALPHA = 0.05
BLOCK_ROWS = 512  # pooled rows per block of distances or kernel values
TIE_TOLERANCE = 1e-12  # relative: permuted statistics this close to the observed one are ties
FEATURE_BLOCK = 64  # features per block of the Kolmogorov–Smirnov tests
OPERATION = "drift"


# --- the reference sample ----------------------------------------------------------------------


def reference_sample(rows: np.ndarray, seed: int) -> np.ndarray:
    """At most `REFERENCE_ROWS` of `rows` (preprocessed), flattened, drawn with `seed`."""
    flat = np.asarray(rows).reshape(len(rows), -1)
    if len(flat) > REFERENCE_ROWS:
        keep = np.random.default_rng(seed).choice(len(flat), REFERENCE_ROWS, replace=False)
        flat = flat[np.sort(keep)]
    return flat.astype(np.float32)


def keep_reference(model: ModelOutcome, rows: np.ndarray, seed: int, folder: Path) -> ModelOutcome:
    """`model` with the reference sample of its preprocessed training `rows` among its files."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REFERENCE_FILE
    np.save(path, reference_sample(rows, seed), allow_pickle=False)
    model.files[REFERENCE] = path
    return model


def load_reference(path: Path, width: int) -> np.ndarray:
    sample = np.load(path, allow_pickle=False)
    if sample.ndim != 2 or sample.shape[1] != width or len(sample) < 2:
        raise ValueError(
            f"the reference sample has shape {list(sample.shape)}, not (rows, {width})"
        )
    return np.asarray(sample, np.float64)


# --- MMD ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mmd:
    statistic: float  # the unbiased MMD²
    p_value: float
    bandwidth: float  # σ
    permutations: int


def squared_distances(z: np.ndarray) -> np.ndarray:
    """‖zᵢ − zⱼ‖² of every pair of rows, in blocks of rows (float64, clipped at 0)."""
    import tensorflow as tf

    pooled = tf.constant(z, tf.float64)
    norms = tf.reduce_sum(pooled * pooled, axis=1)
    out = np.empty((len(z), len(z)), np.float64)
    for i in range(0, len(z), BLOCK_ROWS):
        block = pooled[i : i + BLOCK_ROWS]
        d2 = norms[i : i + BLOCK_ROWS, None] + norms[None, :]
        d2 -= 2.0 * tf.matmul(block, pooled, transpose_b=True)
        out[i : i + BLOCK_ROWS] = tf.maximum(d2, 0.0).numpy()
    np.fill_diagonal(out, 0.0)
    return out


def median_bandwidth(d2: np.ndarray) -> float:
    """σ = √(median / 2) of the pairs' squared distances (the lower median of the distinct
    pairs, as Alibi's `sigma_median`); the mean instead when over half the pairs coincide, and
    1 when every pair does."""
    pairs = d2[np.triu_indices(len(d2), k=1)]
    middle = (len(pairs) - 1) // 2
    median = float(np.partition(pairs, middle)[middle])
    if median <= 0.0:
        median = float(pairs.mean()) or 2.0
    return math.sqrt(median / 2.0)


def permutation_labels(n: int, m: int, permutations: int, seed: int) -> np.ndarray:
    """(m + n, 1 + B) indicators of the incoming rows: the pooled order (reference first), then
    B permutations of it."""
    observed = np.concatenate([np.zeros(m), np.ones(n)])
    rng = np.random.default_rng(seed)
    shuffled = [rng.permutation(observed) for _ in range(permutations)]
    return np.stack([observed, *shuffled], axis=1)


def mmd2_of_labels(d2: np.ndarray, labels: np.ndarray, gamma: float) -> np.ndarray:
    """The unbiased MMD² of every labelling (a column of `labels`) of the pooled rows, from one
    pass over the kernel matrix K (zero diagonal) in row blocks. With s the incoming rows'
    indicator, r = K·1 and a = sᵀKs: Σk(x, x) = a, Σk(x, y) = sᵀr − a, Σk(y, y) = 1ᵀr − 2sᵀr + a."""
    import tensorflow as tf

    s = tf.constant(labels, tf.float64)
    ks = []
    for i in range(0, len(d2), BLOCK_ROWS):
        kernel = tf.exp(-gamma * tf.constant(d2[i : i + BLOCK_ROWS]))
        ks.append(tf.concat([tf.matmul(kernel, s), tf.reduce_sum(kernel, 1, keepdims=True)], 1))
    products = tf.concat(ks, axis=0)
    # The diagonal is exp(0) = 1: taken out here rather than zeroed in every block.
    k_s, row_sums = products[:, :-1] - s, products[:, -1:] - 1.0
    within = tf.reduce_sum(s * k_s, axis=0).numpy()
    to_all = tf.reduce_sum(s * row_sums, axis=0).numpy()
    total = float(tf.reduce_sum(row_sums))
    n = int(labels[:, 0].sum())
    m = len(labels) - n
    xx, xy, yy = within, to_all - within, total - 2.0 * to_all + within
    return np.asarray(xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (n * m))


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> Mmd:
    """The MMD² of rows x against the reference y and its permutation p-value."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError("the MMD needs at least 2 rows on each side")
    d2 = squared_distances(np.concatenate([y, x]).astype(np.float64))
    sigma = median_bandwidth(d2)
    labels = permutation_labels(len(x), len(y), permutations, seed)
    stats = mmd2_of_labels(d2, labels, 1.0 / (2.0 * sigma * sigma))
    observed, permuted = float(stats[0]), stats[1:]
    # Ties count as at least as large: a labelling as extreme as the observed one, summed in
    # another order, may differ from it by rounding alone.
    tie = TIE_TOLERANCE * max(1.0, abs(observed))
    p_value = (1.0 + float(np.sum(permuted >= observed - tie))) / (permutations + 1.0)
    return Mmd(observed, p_value, sigma, permutations)


# --- Kolmogorov–Smirnov per feature ------------------------------------------------------------


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """The BH-adjusted p-values: q₍ₖ₎ = min over j ≥ k of p₍ⱼ₎·F/j, at most 1."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def feature_tests(x: np.ndarray, y: np.ndarray, alpha: float) -> list[dict[str, Any]]:
    """Each feature's KS statistic and p-value, its BH-adjusted p-value, and whether it
    drifted (adjusted p ≤ α)."""
    from scipy.stats import ks_2samp

    statistics, p_values = np.empty(x.shape[1]), np.empty(x.shape[1])
    for j in range(0, x.shape[1], FEATURE_BLOCK):  # SciPy's float64 copy: a block at a time
        block = slice(j, j + FEATURE_BLOCK)
        result = ks_2samp(x[:, block], y[:, block], axis=0)
        statistics[block], p_values[block] = result.statistic, result.pvalue
    adjusted = benjamini_hochberg(p_values)
    return [
        {
            "feature": j,
            "statistic": float(statistics[j]),
            "p_value": float(p_values[j]),
            "p_value_adjusted": float(adjusted[j]),
            "drift": bool(adjusted[j] <= alpha),
        }
        for j in range(len(p_values))
    ]


# --- the answer --------------------------------------------------------------------------------


def drift_test(
    x: np.ndarray,
    reference: np.ndarray,
    *,
    permutations: int = DEFAULT_PERMUTATIONS,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> dict[str, Any]:
    """The drift answer for preprocessed, flattened rows x against `reference`: the MMD test
    (`drift`, `p_value`, `statistic`) and the per-feature tests (`features`)."""
    if not 1 <= permutations <= MAX_PERMUTATIONS:
        raise ValueError(f"permutations must be in [1, {MAX_PERMUTATIONS}]")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    x = np.asarray(x).reshape(len(x), -1)  # as sent (float32): only the MMD's rows in float64
    if len(x) < 2:
        raise ValueError("a drift test needs at least 2 rows")
    used = x
    if len(x) > MMD_ROWS:
        keep = np.random.default_rng([seed, 1]).choice(len(x), MMD_ROWS, replace=False)
        used = x[np.sort(keep)]
    mmd = mmd_test(used.astype(np.float64), reference, permutations, seed)
    features = feature_tests(x, reference, alpha)
    return {
        "drift": mmd.p_value <= alpha,
        "p_value": mmd.p_value,
        "statistic": mmd.statistic,
        "bandwidth": mmd.bandwidth,
        "alpha": alpha,
        "permutations": permutations,
        "rows": len(x),
        "mmd_rows": len(used),
        "reference_rows": len(reference),
        "features_drifted": sum(f["drift"] for f in features),
        "features": features,
    }


class BeyondScaling(ValueError):
    """A finite row that the model's preprocessing takes beyond float32's range."""


class DriftServable:
    """`drift` on a model's reference sample: the models row's scaler and the sample, loaded
    without the model's network (the service keeps it in its model cache apart)."""

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        self.operations = [OPERATION]
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.scaler = Scaler.from_dict(meta.get("preprocessing") or {"scale": "none"})
        self.reference = load_reference(files[REFERENCE], math.prod(self.input_shape))

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation != OPERATION or inputs is None:
            raise UnsupportedOperation(operation, self.operations)
        rows = np.asarray(inputs, np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # found and refused just below
            x = self.scaler.transform(rows).reshape(len(rows), -1)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            raise BeyondScaling(
                f"row {int(np.argmin(finite))} is too large for the model's scaling"
            )
        return drift_test(x, self.reference, **options)
