"""Principal component analysis: the decomposition in TensorFlow (an exact SVD, or the randomised
range finder of Halko, Martinsson & Tropp 2011 for wide data), the `pca` job, and its serving
side in NumPy (a projection is one matrix product; serving does not load TensorFlow).

Conventions are scikit-learn's: rows are centred on their mean, explained variance is
s² / (n − 1), each component's sign makes its largest-magnitude coefficient positive, a float
`n_components` keeps the fewest components whose cumulative explained-variance ratio exceeds it,
and whitening divides each projection by the square root of its explained variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.anomaly.scoring import anomaly_mask, evaluate, threshold
from ml.core.preprocessing import Scaler
from ml.core.reporting import JobFailed, ModelOutcome, Reporter, RunContext, RunOutcome
from ml.core.serving import UnsupportedOperation
from ml.core.splits import split_indices, stratified_split_indices
from ml.reduction import shared as reduction

MODEL_FILE = "pca.npz"
# Per-feature residual variance floor for the standardised score (as the autoencoder's).
VARIANCE_FLOOR = 1e-6
# `auto` picks the randomised method when both sides of the data exceed this and fewer than
# RANDOMIZED_SHARE of the possible components are asked for (scikit-learn's rule).
RANDOMIZED_ABOVE = 500
RANDOMIZED_SHARE = 0.8
# Components recorded in the metric history (the spectrum of very wide data is cut here).
MAX_SERIES = 1000
SCORE_BLOCK = 4096


@dataclass
class Decomposition:
    """Centring mean, components (rows, unit norm), their singular values and explained
    variances, and the data's total variance (sum of feature variances, ddof = 1)."""

    mean: np.ndarray
    components: np.ndarray
    singular_values: np.ndarray
    explained_variance: np.ndarray
    total_variance: float
    method: str

    @property
    def ratio(self) -> np.ndarray:
        if self.total_variance <= 0:
            return np.zeros_like(self.explained_variance)
        return self.explained_variance / self.total_variance

    def keep(self, k: int) -> Decomposition:
        return Decomposition(
            self.mean,
            self.components[:k],
            self.singular_values[:k],
            self.explained_variance[:k],
            self.total_variance,
            self.method,
        )


def resolve_method(method: str, n_components: int | float, rows: int, features: int) -> str:
    """`svd` or `randomized`; `auto` takes the randomised range finder for wide data only."""
    if method != "auto":
        return method
    side = min(rows, features)
    if (
        isinstance(n_components, int)
        and min(rows, features) > RANDOMIZED_ABOVE
        and n_components < RANDOMIZED_SHARE * side
    ):
        return "randomized"
    return "svd"


def default_power_iterations(n_components: int, rows: int, features: int) -> int:
    """scikit-learn's choice: more passes when few components are asked of a large spectrum."""
    return 7 if n_components < 0.1 * min(rows, features) else 4


def _flip_signs(components: Any) -> Any:
    """Make each row's largest-magnitude coefficient positive (scikit-learn's `svd_flip` on v)."""
    import tensorflow as tf

    biggest = tf.argmax(tf.abs(components), axis=1, output_type=tf.int32)
    signs = tf.sign(tf.gather(components, biggest, axis=1, batch_dims=1))
    signs = tf.where(signs == 0, tf.ones_like(signs), signs)
    return components * signs[:, None]


def decompose(
    x: np.ndarray,
    *,
    method: str,
    n_components: int | None = None,
    oversamples: int = 10,
    power_iterations: int | None = None,
    seed: int = 0,
) -> Decomposition:
    """The principal components of the rows of x (float32 or float64; computed in x's dtype).

    `svd` returns every component (min(rows, features)); `randomized` needs `n_components` and
    returns that many, from a subspace of n_components + oversamples random directions refined
    by `power_iterations` passes over the data (each re-orthonormalised with a QR step).
    """
    import tensorflow as tf

    n, d = x.shape
    data = tf.constant(x)
    mean = tf.reduce_mean(data, axis=0)
    centred = data - mean
    total = tf.reduce_sum(tf.square(centred)) / (n - 1)
    if method == "svd":
        s, _, v = tf.linalg.svd(centred, full_matrices=False)
        components = tf.transpose(v)
    elif method == "randomized":
        if n_components is None:
            raise ValueError("the randomised method needs an int n_components")
        width = min(n_components + oversamples, n, d)
        passes = (
            power_iterations
            if power_iterations is not None
            else default_power_iterations(n_components, n, d)
        )
        omega = tf.random.stateless_normal((d, width), [seed, 0], dtype=centred.dtype)
        q, _ = tf.linalg.qr(centred @ omega)
        for _ in range(passes):
            z, _ = tf.linalg.qr(tf.matmul(centred, q, transpose_a=True))
            q, _ = tf.linalg.qr(centred @ z)
        s, _, v = tf.linalg.svd(tf.matmul(q, centred, transpose_a=True), full_matrices=False)
        s, components = s[:n_components], tf.transpose(v)[:n_components]
    else:
        raise ValueError(f"unknown method {method!r}")
    components = _flip_signs(components)
    s = s.numpy()
    return Decomposition(
        mean=mean.numpy(),
        components=components.numpy(),
        singular_values=s,
        explained_variance=s**2 / (n - 1),
        total_variance=float(total),
        method=method,
    )


def components_for(target: float, ratio: np.ndarray) -> int:
    """The fewest components whose cumulative explained-variance ratio exceeds `target`."""
    return min(len(ratio), int(np.searchsorted(np.cumsum(ratio), target, side="right")) + 1)


# --- the maths of a fitted model, shared by training and serving -------------------------------


@dataclass
class PcaModel:
    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    whiten: bool
    residual_variance: np.ndarray | None = None

    def encode(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) @ self.components.T
        if self.whiten:
            z = z / np.sqrt(np.maximum(self.explained_variance, np.finfo(z.dtype).tiny))
        return z

    def decode(self, z: np.ndarray) -> np.ndarray:
        if self.whiten:
            z = z * np.sqrt(self.explained_variance)
        return z @ self.components + self.mean

    def residual(self, x: np.ndarray) -> np.ndarray:
        centred = x - self.mean
        return centred - (centred @ self.components.T) @ self.components

    def score(self, x: np.ndarray) -> np.ndarray:
        """Mean over features of residual² / its variance on normal rows (the autoencoder's
        standardised reconstruction error; the residual is the distance to the subspace)."""
        assert self.residual_variance is not None
        parts = [
            np.mean(self.residual(x[i : i + SCORE_BLOCK]) ** 2 / self.residual_variance, axis=1)
            for i in range(0, len(x), SCORE_BLOCK)
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert self.residual_variance is not None
        np.savez(
            path,
            mean=self.mean,
            components=self.components,
            explained_variance=self.explained_variance,
            whiten=np.bool_(self.whiten),
            residual_variance=self.residual_variance,
        )
        return path

    @classmethod
    def load(cls, path: Path) -> PcaModel:
        with np.load(path, allow_pickle=False) as saved:
            return cls(
                mean=saved["mean"],
                components=saved["components"],
                explained_variance=saved["explained_variance"],
                whiten=bool(saved["whiten"]),
                residual_variance=saved["residual_variance"],
            )


# --- the job ---------------------------------------------------------------------------------


@dataclass
class Parts:
    fit: np.ndarray  # indices of the rows the components are fitted on (normal rows only)
    calibration: np.ndarray  # held-out normal rows: the score threshold
    evaluation: np.ndarray  # labelled rows held out for ROC-AUC
    truth: np.ndarray | None  # True = anomaly, for the evaluation rows


def split(rows: reduction.Rows, params: Any) -> Parts:
    y = rows.y if rows.y is not None and rows.y.ndim == 1 else None
    truth = anomaly_mask(y, params, rows.anomaly_label)
    try:
        if truth is not None:
            labels = truth.astype(np.int64)
            parts = stratified_split_indices(
                labels, params.validation_split, params.evaluation_split, params.seed
            )
            normal = ~truth
            return Parts(
                fit=parts.train[normal[parts.train]],
                calibration=parts.validation[normal[parts.validation]],
                evaluation=parts.evaluation,
                truth=truth[parts.evaluation],
            )
        parts = split_indices(rows.rows, params.validation_split, 0.0, params.seed)
    except ValueError as exc:
        raise JobFailed("invalid_data", str(exc)) from exc
    return Parts(parts.train, parts.validation, parts.evaluation, None)


def check_components(n_components: int | float, rows: int, features: int) -> None:
    if rows < 2:
        raise JobFailed("invalid_data", f"PCA needs at least 2 rows to fit on; got {rows}")
    if isinstance(n_components, int):
        if n_components > features:
            raise JobFailed(
                "invalid_data",
                f"n_components = {n_components} is more than the {features} features of the "
                f"data set: ask for at most {features}",
            )
        if n_components > rows:
            raise JobFailed(
                "invalid_data",
                f"n_components = {n_components} is more than the {rows} rows PCA is fitted on "
                f"(at most min(rows, features) components exist): ask for at most {rows}",
            )


def spectrum_points(decomposition: Decomposition, reporter: Reporter) -> None:
    """One point per component index (step 1 = the first component)."""
    ratio = decomposition.ratio
    cumulative = np.cumsum(ratio)
    for j in range(min(len(ratio), MAX_SERIES)):
        reporter.metrics(
            j + 1,
            {
                "explained_variance": float(decomposition.explained_variance[j]),
                "explained_variance_ratio": float(ratio[j]),
                "cumulative_explained_variance_ratio": float(cumulative[j]),
                "singular_value": float(decomposition.singular_values[j]),
            },
        )


def train_pca(spec: Any, reporter: Reporter, context: RunContext) -> RunOutcome:
    p = spec.params
    rows = reduction.load_rows(context, "pca")
    parts = split(rows, p)
    dtype = np.float64 if p.dtype == "float64" else np.float32
    check_components(p.n_components, len(parts.fit), rows.features)
    scaler = reduction.fit_scaler(spec, rows.raw[parts.fit])

    def scaled(idx: np.ndarray) -> np.ndarray:
        return reduction.flat(scaler, rows.raw[idx], dtype)

    x_fit = scaled(parts.fit)
    n, d = x_fit.shape
    method = resolve_method(p.method, p.n_components, n, d)
    reporter.progress(0.1, method=method)
    full = decompose(
        x_fit,
        method=method,
        n_components=p.n_components if method == "randomized" else None,
        oversamples=p.oversamples,
        power_iterations=p.power_iterations,
        seed=p.seed,
    )
    spectrum_points(full, reporter)
    if isinstance(p.n_components, int):
        k = p.n_components
    else:
        k = components_for(p.n_components, full.ratio)
    kept = full.keep(k)
    model = PcaModel(kept.mean, kept.components, kept.explained_variance, p.whiten)
    x_cal = scaled(parts.calibration)
    held_out = x_cal if len(x_cal) else x_fit
    variance = np.concatenate([model.residual(x_fit), model.residual(x_cal)]).var(axis=0)
    model.residual_variance = np.maximum(variance, VARIANCE_FLOOR).astype(dtype)
    normal_scores = model.score(held_out)
    cut = threshold(normal_scores, p.contamination, p.target_fpr)
    reporter.progress(0.8, n_components=k)
    anomaly: dict[str, Any] = {}
    if parts.truth is not None and len(parts.evaluation):
        anomaly = evaluate(model.score(scaled(parts.evaluation)), parts.truth, cut)
    reconstruction_error = float(np.mean(model.residual(held_out) ** 2))
    path = model.save(context.workdir / "model" / MODEL_FILE)
    ratio = kept.ratio
    evaluation = {
        "n_components": k,
        "method": method,
        "explained_variance": [float(v) for v in kept.explained_variance],
        "explained_variance_ratio": [float(v) for v in ratio],
        "total_explained_variance_ratio": float(ratio.sum()),
        "reconstruction_error": reconstruction_error,
        **anomaly,
    }
    calibration = {
        "threshold": cut,
        "contamination": p.contamination,
        "target_fpr": p.target_fpr,
        "calibration_rows": len(held_out),
        "score": "standardized_reconstruction_error",
    }
    outcome = ModelOutcome(
        files={"pca": path},
        input_shape=list(rows.feature_shape),
        capabilities=["encode", "reconstruct", "score"],
        preprocessing=scaler.to_dict(),
        calibration=calibration,
        evaluation=evaluation,
    )
    result = {
        "n_components": k,
        "method": method,
        "total_explained_variance_ratio": float(ratio.sum()),
        "total_variance": full.total_variance,
        "rows": n,
        "features": d,
        "reconstruction_error": reconstruction_error,
        "threshold": cut,
        "energy_units": "variance of the scaled features",
        **{key: v for key, v in anomaly.items() if key in ("roc_auc", "pr_auc")},
    }
    reporter.progress(1.0, n_components=k)
    return RunOutcome(result=result, device=_device(), model=outcome)


def _device() -> str:
    import tensorflow as tf

    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


# --- serving --------------------------------------------------------------------------------


class PcaServable:
    """encode (projections), reconstruct (back in the data's units) and score (standardised
    distance to the principal subspace, with the threshold calibrated at training)."""

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.operations = list(meta.get("capabilities") or ["encode", "reconstruct", "score"])
        self.scaler = Scaler.from_dict(meta.get("preprocessing") or {"scale": "none"})
        calibration = meta.get("calibration") or {}
        self.threshold = float(calibration.get("threshold", math.inf))
        self.model = PcaModel.load(files["pca"])

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation not in self.operations or operation not in ("encode", "reconstruct", "score"):
            raise UnsupportedOperation(operation, self.operations)
        assert inputs is not None
        rows = np.asarray(inputs)
        dtype = self.model.components.dtype
        x = self.scaler.transform(rows.astype(dtype, copy=False)).reshape(len(rows), -1)
        if operation == "encode":
            return {"latents": self.model.encode(x)}
        if operation == "reconstruct":
            out = self.model.decode(self.model.encode(x)).reshape(len(rows), *self.input_shape)
            return {"reconstructions": self.scaler.inverse_transform(out)}
        scores = self.model.score(x)
        return {
            "scores": scores,
            "threshold": self.threshold,
            "is_anomaly": scores > self.threshold,
        }
