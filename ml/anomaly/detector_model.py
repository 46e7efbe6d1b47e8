"""The classical anomaly detectors of the `detector` kind as arrays: fitted with scikit-learn
(or, for ECOD, in NumPy), stored as plain arrays in one `.npz` (no pickle: a model file is safe
to load), and scored from those arrays in NumPy, in blocks of bounded size.

Every score is "higher = more anomalous" and equals scikit-learn's ``-score_samples`` for the
methods it has:

- `isolation_forest`: each tree's split features, thresholds and children, and the path length
  credited at each leaf (its depth + c(leaf rows), Liu et al. 2008); score 2^(−mean / c(ψ)).
- `one_class_svm`: the support vectors, their dual coefficients and the RBF γ; score
  −Σ αᵢ K(svᵢ, x).
- `local_outlier_factor` (novelty): the training rows, each one's k-distance and local
  reachability density; score mean(lrd(neighbours)) / lrd(x) (Breunig et al. 2000). The
  neighbours are found with scikit-learn's own neighbour index, built from the stored rows
  when the model loads (no randomness: the same index scikit-learn's LOF searches).
- `ecod` (Li et al. 2022): each feature's sorted training values and the sign of its skewness;
  score max(O_left, O_right, O_auto), the sums over features of −log of the empirical tail
  probabilities. The row being scored counts in its own tails, (count + 1) / (n + 1), as when
  the paper scores a row together with the training rows: a value beyond every training value
  gets a finite score, and a row's score does not depend on the other rows of its batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.core.serving import ScaledServable, calibrated_threshold, score_answer

MODEL_FILE = "detector.npz"
METHODS = ("isolation_forest", "one_class_svm", "local_outlier_factor", "ecod")
# Values in one working matrix while scoring (rows of a block × trees, support vectors or
# training rows): 4 Mi float64 values, 32 MiB.
BLOCK_VALUES = 1 << 22
EULER_GAMMA = 0.5772156649015329
LRD_EPSILON = 1e-10  # as scikit-learn's LocalOutlierFactor


def average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the mean path length of an unsuccessful search in a binary search tree of n keys."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + EULER_GAMMA) - 2.0 * (n[big] - 1.0) / n[big]
    return out


# --- fitting -----------------------------------------------------------------------------------


def fit_isolation_forest(
    x: np.ndarray, n_estimators: int, max_samples: int | None, seed: int
) -> dict[str, np.ndarray]:
    from sklearn.ensemble import IsolationForest

    psi = min(max_samples or 256, len(x))
    forest = IsolationForest(n_estimators=n_estimators, max_samples=psi, random_state=seed)
    forest.fit(x)
    trees = [estimator.tree_ for estimator in forest.estimators_]
    width = max(t.node_count for t in trees)
    shape = (len(trees), width)
    left, right = np.full(shape, -1, np.int32), np.full(shape, -1, np.int32)
    feature, threshold = np.zeros(shape, np.int32), np.zeros(shape, np.float64)
    credit = np.zeros(shape, np.float64)
    for i, tree in enumerate(trees):
        n = tree.node_count
        left[i, :n], right[i, :n] = tree.children_left, tree.children_right
        feature[i, :n] = np.maximum(tree.feature, 0)
        threshold[i, :n] = tree.threshold
        depth = np.zeros(n, np.float64)
        for node in range(n):  # children come after their parent in scikit-learn's arrays
            if tree.children_left[node] >= 0:
                depth[tree.children_left[node]] = depth[tree.children_right[node]] = depth[node] + 1
        credit[i, :n] = depth + average_path_length(tree.n_node_samples)
    return {
        "left": left,
        "right": right,
        "feature": feature,
        "threshold": threshold,
        "credit": credit,
        "max_samples": np.int64(forest.max_samples_),
    }


def rbf_gamma(x: np.ndarray) -> float:
    """scikit-learn's `gamma="scale"`: 1 / (features × the variance of all values)."""
    variance = float(x.var())
    return 1.0 / (x.shape[1] * variance) if variance > 0 else 1.0


def fit_one_class_svm(x: np.ndarray, nu: float, gamma: float) -> dict[str, np.ndarray]:
    from sklearn.svm import OneClassSVM

    svm = OneClassSVM(kernel="rbf", nu=nu, gamma=gamma).fit(x)
    return {
        "support_vectors": np.asarray(svm.support_vectors_, np.float64),
        "dual_coef": np.asarray(svm.dual_coef_[0], np.float64),
        "gamma": np.float64(gamma),
    }


def fit_local_outlier_factor(x: np.ndarray, n_neighbors: int) -> dict[str, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    k = max(1, min(n_neighbors, len(x) - 1))
    distances, neighbours = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
    k_distance = distances[:, -1]
    reach = np.maximum(distances, k_distance[neighbours])
    lrd = 1.0 / (reach.mean(axis=1) + LRD_EPSILON)
    return {
        "rows": np.asarray(x, np.float64),
        "k_distance": k_distance,
        "lrd": lrd,
        "n_neighbors": np.int64(k),
    }


def fit_ecod(x: np.ndarray) -> dict[str, np.ndarray]:
    x = np.asarray(x, np.float64)
    centred = x - x.mean(axis=0)
    m2, m3 = (centred**2).mean(axis=0), (centred**3).mean(axis=0)
    skewness = np.divide(m3, m2**1.5, out=np.zeros_like(m2), where=m2 > 0)
    return {"sorted": np.sort(x, axis=0), "left_skewed": skewness < 0}


# --- scoring -----------------------------------------------------------------------------------


def _block_rows(width: int) -> int:
    return max(1, BLOCK_VALUES // max(1, width))


def _isolation_forest(a: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    trees = np.arange(a["left"].shape[0])
    # scikit-learn's trees compare float32 inputs with their float64 thresholds
    x = x.astype(np.float32)
    node = np.zeros((len(x), len(trees)), np.int64)
    rows = np.arange(len(x))[:, None]
    while True:
        left = a["left"][trees, node]
        inner = left >= 0
        if not inner.any():
            break
        go_left = x[rows, a["feature"][trees, node]] <= a["threshold"][trees, node]
        node = np.where(inner, np.where(go_left, left, a["right"][trees, node]), node)
    depth = a["credit"][trees, node].mean(axis=1)
    return np.asarray(2.0 ** (-depth / average_path_length(a["max_samples"])))


def _cross(x: np.ndarray, y: np.ndarray, y_norms: np.ndarray) -> np.ndarray:
    """|y|² − 2 x·y for every pair (one product, in place): |x − y|² less |x|²."""
    g = x @ y.T
    g *= -2.0
    g += y_norms
    return g


def _one_class_svm(a: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    g = _cross(x, a["support_vectors"], a["_norms"])
    g += (x**2).sum(axis=1)[:, None]
    np.maximum(g, 0.0, out=g)
    g *= -a["gamma"]
    np.exp(g, out=g)
    return np.asarray(-(g @ a["dual_coef"]))


def _local_outlier_factor(a: dict[str, Any], x: np.ndarray) -> np.ndarray:
    import sklearn

    with sklearn.config_context(working_memory=BLOCK_VALUES * 8 >> 20):
        distances, neighbours = a["_index"].kneighbors(x)
    reach = np.maximum(distances, a["k_distance"][neighbours])
    lrd = 1.0 / (reach.mean(axis=1) + LRD_EPSILON)
    return np.asarray(a["lrd"][neighbours].mean(axis=1) / lrd)


def ecod_tails(sorted_columns: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """−log of each value's left and right tail probabilities, the value itself counted."""
    n = sorted_columns.shape[0]
    below = np.empty(x.shape, np.float64)
    above = np.empty(x.shape, np.float64)
    for j in range(x.shape[1]):
        column = sorted_columns[:, j]
        below[:, j] = np.searchsorted(column, x[:, j], side="right")
        above[:, j] = n - np.searchsorted(column, x[:, j], side="left")
    return -np.log((below + 1.0) / (n + 1.0)), -np.log((above + 1.0) / (n + 1.0))


def _ecod(a: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    left, right = ecod_tails(a["sorted"], x)
    auto = np.where(a["left_skewed"], left, right)
    return np.asarray(np.maximum.reduce([left.sum(axis=1), right.sum(axis=1), auto.sum(axis=1)]))


SCORERS = {
    "isolation_forest": (_isolation_forest, "left"),
    "one_class_svm": (_one_class_svm, "support_vectors"),
    "local_outlier_factor": (_local_outlier_factor, "rows"),
    "ecod": (_ecod, "sorted"),
}


class DetectorModel:
    """A fitted detector: its method and the arrays that score rows (scaled, flattened)."""

    def __init__(self, method: str, arrays: dict[str, np.ndarray]) -> None:
        if method not in SCORERS:
            raise ValueError(f"unknown detector method {method!r}")
        self.method = method
        self.arrays = arrays
        self._work: dict[str, Any] = dict(arrays)  # plus what scoring derives once
        if method == "one_class_svm":
            self._work["_norms"] = (arrays["support_vectors"] ** 2).sum(axis=1)
        if method == "local_outlier_factor":
            # A neighbour index over the stored rows: what scikit-learn's own LOF searches
            # with, built from the arrays (deterministic, no randomness, no pickle).
            from sklearn.neighbors import NearestNeighbors

            k = int(arrays["n_neighbors"])
            self._work["_index"] = NearestNeighbors(n_neighbors=k).fit(arrays["rows"])

    def score(self, x: np.ndarray) -> np.ndarray:
        """Anomaly scores of rows x (higher = more anomalous), in blocks of bounded memory."""
        scorer, widest = SCORERS[self.method]
        x = np.asarray(x, np.float64)
        step = _block_rows(int(np.prod(self.arrays[widest].shape[:1])))
        if self.method == "ecod":
            step = _block_rows(x.shape[1] * 3)
        elif self.method == "local_outlier_factor":  # the index bounds its own distance blocks
            step = _block_rows(x.shape[1] + 4 * int(self.arrays["n_neighbors"]))
        parts = [scorer(self._work, x[i : i + step]) for i in range(0, len(x), step)]
        return np.concatenate(parts) if parts else np.zeros(0)

    @property
    def stored_values(self) -> int:
        return int(sum(np.size(v) for v in self.arrays.values()))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, method=np.str_(self.method), **self.arrays)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: Path) -> DetectorModel:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files if name != "method"}
            return cls(str(saved["method"]), arrays)


class DetectorServable(ScaledServable):
    """score: a classical detector's anomaly scores, with the threshold calibrated at training."""

    serves = ("score",)

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        super().__init__(meta)
        self.threshold = calibrated_threshold(meta)
        self.model = DetectorModel.load(files["detector"])

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        scores = self.model.score(self.scaled(operation, inputs, np.float64))
        return score_answer(scores, self.threshold)
