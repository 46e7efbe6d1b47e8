"""What a `detector_comparison` keeps: each detector's ROC curve on the labelled rows held out,
in one `.npz` of plain arrays, and the picture drawn from them (`roc`). It serves no operation:
the comparison is a report; the detector it recommends is trained as its own kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.core.serving import DrawsOnePicture, ScaledServable, png

CURVES_FILE = "roc.npz"
# Points kept per curve: its corners, thinned evenly beyond this (the picture needs no more).
MAX_POINTS = 500
Curve = tuple[np.ndarray, np.ndarray]  # false- and true-positive rates


def roc_curve(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of every threshold (scikit-learn's corners), thinned."""
    from sklearn.metrics import roc_curve as curve

    fpr, tpr, _ = curve(truth, scores)
    if len(fpr) > MAX_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, MAX_POINTS).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr, tpr


def save_curves(path: Path, names: list[str], curves: list[Curve], aucs: list[float]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "names": np.array(names, dtype=np.str_),
        "roc_auc": np.array(aucs, dtype=np.float64),
    }
    for i, (fpr, tpr) in enumerate(curves):
        arrays[f"fpr_{i}"], arrays[f"tpr_{i}"] = fpr, tpr
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def draw_roc(
    names: list[str], curves: list[tuple[np.ndarray, np.ndarray]], aucs: list[float]
) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5.5))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for name, (fpr, tpr), auc in sorted(zip(names, curves, aucs, strict=True), key=lambda c: -c[2]):
        ax.step(fpr, tpr, where="post", linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlabel("false-positive rate (normal rows flagged)")
    ax.set_ylabel("true-positive rate (anomalies flagged)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title("ROC on the labelled rows held out")
    ax.legend(loc="lower right", fontsize=8)
    return png(figure)


class ComparisonServable(ScaledServable, DrawsOnePicture):
    """The ROC picture of a detector comparison; no operations."""

    serves = ()
    drawing = "roc"

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        super().__init__(meta)
        with np.load(files["roc"], allow_pickle=False) as saved:
            self.names = [str(n) for n in saved["names"]]
            self.aucs = [float(a) for a in saved["roc_auc"]]
            self.curves = [(saved[f"fpr_{i}"], saved[f"tpr_{i}"]) for i in range(len(self.names))]

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        self.scaled(operation, inputs, np.float64)  # refuses every operation
        return {}

    def draw(self) -> bytes:
        return draw_roc(self.names, self.curves, self.aucs)
