"""Agglomerative (hierarchical) clustering with SciPy's linkage, in NumPy float64: the merge
tree, where it is cut, how new rows are assigned by the linkage's own rule, and the dendrogram.

Every row is clustered (as for the other clustering kinds). The tree is built from the condensed
matrix of pairwise Euclidean distances, n(n − 1)/2 numbers, so memory and time grow with rows²:
the job refuses data sets over `ml.clustering.hierarchical.MAX_ROWS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.core.reporting import Reporter
from ml.core.serving import DrawsOnePicture, ScaledServable, png

MODEL_FILE = "hierarchical.npz"
# The merge heights recorded as metric points: the last ones (the top of the tree).
MAX_MERGE_POINTS = 1000
# Query rows × training rows per block when predicting by member distances.
PREDICT_BLOCK = 2**22
DENDROGRAM_LEAVES = 30


def build(x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The linkage matrix Z (n − 1 merges: child, child, height, size) and the condensed
    distances it was built from."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import pdist

    distances = pdist(x)
    return linkage(distances, method=method), distances


def cophenetic_correlation(tree: np.ndarray, distances: np.ndarray) -> float:
    """Pearson correlation of the tree's cophenetic distances with the data's distances, in
    blocks: scipy's `cophenet(Z, Y)` makes several rows²-sized temporaries."""
    from scipy.cluster.hierarchy import cophenet

    if len(distances) < 2:
        return float("nan")
    heights = cophenet(tree)
    mean_d, mean_h = float(np.mean(distances)), float(np.mean(heights))
    cross = square_d = square_h = 0.0
    for i in range(0, len(distances), PREDICT_BLOCK):
        a = distances[i : i + PREDICT_BLOCK] - mean_d
        b = heights[i : i + PREDICT_BLOCK] - mean_h
        cross += float(a @ b)
        square_d += float(a @ a)
        square_h += float(b @ b)
    return cross / np.sqrt(square_d * square_h) if square_d > 0 and square_h > 0 else float("nan")


def clusters_at(heights: np.ndarray, distance_threshold: float) -> int:
    """scikit-learn's rule: merges at or above the threshold are not made."""
    return int(np.count_nonzero(heights >= distance_threshold)) + 1


def cut(tree: np.ndarray, k: int) -> np.ndarray:
    """Labels after the first n − k merges, numbered in order of each cluster's first row."""
    n = len(tree) + 1
    merges = n - k
    node = np.arange(2 * n - 1)
    # A node's cluster is that of the last merge above it: walk the merges from the top down.
    for j in range(merges - 1, -1, -1):
        a, b = int(tree[j, 0]), int(tree[j, 1])
        node[a] = node[b] = node[n + j]
    _, first, inverse = np.unique(node[:n], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse]


def cut_height(heights: np.ndarray, k: int) -> float:
    """A height between the last merge made and the first one not made."""
    n = len(heights) + 1
    below = heights[n - k - 1] if n - k >= 1 else 0.0
    above = heights[n - k] if n - k < len(heights) else below
    return float((below + above) / 2)


@dataclass
class Assigner:
    """Assigns rows to the clusters of a cut tree by the linkage's rule, from the training rows
    sorted by cluster: ward — nearest centroid; single — nearest member; complete — smallest
    largest distance to a member; average — smallest mean distance to the members. Distances
    are Euclidean, in the scaled space."""

    method: str
    rows: np.ndarray  # training rows, sorted by cluster
    starts: np.ndarray  # where each cluster's rows begin
    sizes: np.ndarray
    centroids: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, labels: np.ndarray, method: str) -> Assigner:
        order = np.argsort(labels, kind="stable")
        sizes = np.bincount(labels)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rows = x[order]
        centroids = np.add.reduceat(rows, starts, axis=0) / sizes[:, None]
        return cls(method, rows, starts, sizes, centroids)

    def distances(self, q: np.ndarray) -> np.ndarray:
        """[rows of q, clusters]: the linkage's distance from each row to each cluster."""
        from scipy.spatial.distance import cdist

        if self.method == "ward":
            return cdist(q, self.centroids)
        block = max(1, PREDICT_BLOCK // max(1, len(self.rows)))
        parts = []
        for i in range(0, len(q), block):
            d = cdist(q[i : i + block], self.rows)
            if self.method == "single":
                parts.append(np.minimum.reduceat(d, self.starts, axis=1))
            elif self.method == "complete":
                parts.append(np.maximum.reduceat(d, self.starts, axis=1))
            else:
                parts.append(np.add.reduceat(d, self.starts, axis=1) / self.sizes)
        return np.concatenate(parts) if parts else np.zeros((0, len(self.sizes)))

    def predict(self, q: np.ndarray) -> dict[str, np.ndarray]:
        d = self.distances(q)
        return {"clusters": d.argmin(axis=1), "distances": d}


def record_merges(tree: np.ndarray, reporter: Reporter) -> None:
    """`merge_height` and `n_clusters` (after the merge) at step j = the j-th merge."""
    n = len(tree) + 1
    for j in range(max(0, len(tree) - MAX_MERGE_POINTS), len(tree)):
        reporter.metrics(j + 1, {"merge_height": float(tree[j, 2]), "n_clusters": n - j - 1})


def save(
    folder: Path, assigner: Assigner, tree: np.ndarray, labels: np.ndarray, height: float, k: int
) -> Path:
    """`hierarchical.npz`: what predicts (the assigner), the tree and where it was cut."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE
    np.savez(
        path,
        rows=assigner.rows,
        starts=assigner.starts,
        sizes=assigner.sizes,
        centroids=assigner.centroids,
        linkage=tree,
        labels=labels,
        method=np.str_(assigner.method),
        cut_height=np.float64(height),
        n_clusters=np.int64(k),
    )
    return path


# --- serving --------------------------------------------------------------------------------


def draw_dendrogram(tree: np.ndarray, height: float, k: int, method: str) -> bytes:
    from matplotlib.figure import Figure
    from scipy.cluster.hierarchy import dendrogram

    n = len(tree) + 1
    figure = Figure(figsize=(8, 4.5))
    ax = figure.subplots()
    leaves = min(n, max(DENDROGRAM_LEAVES, k))
    dendrogram(
        tree,
        ax=ax,
        truncate_mode="lastp" if leaves < n else None,
        p=leaves,
        color_threshold=height,
        above_threshold_color="0.6",
        show_leaf_counts=True,
        leaf_rotation=90,
        leaf_font_size=7,
    )
    ax.axhline(height, color="tab:red", linestyle="--", linewidth=1)
    ax.set_ylabel("merge height (scaled units)")
    shown = f"the last {leaves - 1} merges" if leaves < n else "every merge"
    ax.set_title(f"{method} linkage, {n} rows, cut into {k} clusters ({shown})")
    return png(figure)


class HierarchicalServable(ScaledServable, DrawsOnePicture):
    """predict (clusters and the linkage's distance to each cluster) and the dendrogram."""

    serves = ("predict",)
    drawing = "dendrogram"

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        super().__init__(meta)
        with np.load(files["hierarchical"], allow_pickle=False) as saved:
            self.assigner = Assigner(
                method=str(saved["method"]),
                rows=saved["rows"],
                starts=saved["starts"],
                sizes=saved["sizes"],
                centroids=saved["centroids"],
            )
            self.tree = saved["linkage"]
            self.height = float(saved["cut_height"])
            self.k = int(saved["n_clusters"])

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        return self.assigner.predict(self.scaled(operation, inputs, np.float64))

    def draw(self) -> bytes:
        return draw_dendrogram(self.tree, self.height, self.k, self.assigner.method)
