"""Kind `pca`: principal components computed with TensorFlow (exact SVD, or a randomised range
finder for wide data); encodes rows, reconstructs them, and scores them by their standardised
distance to the principal subspace, with a threshold calibrated like the autoencoder's. The
decomposition, the fitted model's maths and its serving are in `ml.reduction.pca_model`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ml.anomaly.autoencoder import AnomalyThreshold
from ml.anomaly.drift import keep_reference
from ml.anomaly.scoring import anomaly_mask, calibrate, evaluate
from ml.clustering.shared import model_outcome
from ml.core.registry import register_kind
from ml.core.reporting import JobFailed, Reporter, RunContext, RunOutcome
from ml.core.sizing import RUNTIME_BYTES, SizeEstimate
from ml.core.spec import JobSpec, Preprocessing, preprocessing_field
from ml.core.splits import split_indices, stratified_split_indices
from ml.reduction import shared as reduction
from ml.reduction.pca_model import (
    MODEL_FILE,
    Decomposition,
    PcaModel,
    components_for,
    decompose,
    resolve_method,
)

# A strict int: 1.0 is not read as "one component" (it would be a 100% variance target).
Components = (
    Annotated[int, Field(strict=True, ge=1, le=100_000)] | Annotated[float, Field(gt=0, lt=1)]
)


DATA_COPIES = 4


class PcaParams(AnomalyThreshold):
    n_components: Components = Field(
        0.95,
        description="How many components to keep: an int, or a float in (0, 1) for the fewest "
        "components whose cumulative explained-variance ratio exceeds it.",
    )
    whiten: bool = Field(
        False, description="Divide each projection by √(its explained variance): unit variance."
    )
    method: Literal["auto", "svd", "randomized"] = Field(
        "auto",
        description="`svd`: exact; `randomized`: Halko et al.'s range finder (needs an int "
        "n_components); `auto`: randomized when rows and features both exceed 500 and "
        "n_components < 80% of min(rows, features), else svd.",
    )
    oversamples: int = Field(
        10, ge=0, le=10_000, description="randomized: extra random directions."
    )
    power_iterations: int | None = Field(
        None,
        ge=0,
        le=100,
        description="randomized: passes over the data (default 7 when n_components < 10% of "
        "min(rows, features), else 4).",
    )
    dtype: Literal["float64", "float32"] = Field(
        "float64", description="Precision of the decomposition and of the stored model."
    )
    seed: int = Field(0, ge=0, lt=2**31, description="Splits and the randomised directions.")
    validation_split: float = Field(
        0.1, ge=0, lt=1, description="Rows held out to calibrate the score threshold."
    )

    @model_validator(mode="after")
    def _check(self) -> PcaParams:
        if self.method == "randomized" and not isinstance(self.n_components, int):
            raise ValueError(
                "an explained-variance target (a float n_components) needs the whole spectrum: "
                "use method `svd` or `auto`, or give an int n_components"
            )
        if self.normal_label is not None and self.anomaly_label is not None:
            raise ValueError("give normal_label or anomaly_label, not both")
        return self


class PcaSpec(JobSpec):
    """Principal component analysis: projections, reconstructions and anomaly scores."""

    kind: Literal["pca"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: PcaParams = Field(default_factory=PcaParams)
    preprocessing: Preprocessing = preprocessing_field("standard")

    def data_problem(self, rows: int, features: int) -> str | None:
        k = self.params.n_components
        if isinstance(k, int) and k > features:
            return (
                f"n_components = {k} is more than the {features} features of {self.dataset}: "
                f"ask for at most {features}"
            )
        return None

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        """The kept components; memory: the rows' copies and the decomposition's factors."""
        p, estimate = self.params, SizeEstimate()
        features = math.prod(row_shape)
        side = min(rows, features)
        k = p.n_components if isinstance(p.n_components, int) else side
        item = 8 if p.dtype == "float64" else 4
        estimate.add_parameters("params.n_components", k * features + features + k)
        estimate.add_memory("runtime", RUNTIME_BYTES)
        # raw, scaled, centred and the split's copy of the rows
        estimate.add_memory("dataset", DATA_COPIES * rows * features * item)
        if resolve_method(p.method, p.n_components, rows, features) == "randomized":
            directions = min(side, k + p.oversamples)
            factors = 3 * (rows + features) * directions
        else:  # the thin SVD: U (rows × side), V (features × side), and TensorFlow's work copy
            factors = 2 * (rows + features) * side
        estimate.add_memory("params.method", factors * item)
        return estimate


PcaSpec.example = {
    "kind": "pca",
    "name": "digits-pca",
    "dataset": "builtin:digits",
    "params": {"n_components": 0.9, "whiten": False, "method": "auto"},
    "preprocessing": {"scale": "standard"},
}

SERVES = frozenset({"encode", "reconstruct", "score"})
# Per-feature residual variance floor for the standardised score (as the autoencoder's).
VARIANCE_FLOOR = 1e-6
# ... and at least this share of its mean over features: a feature (nearly) constant on the
# fitted rows, a pixel almost always blank, would otherwise make a new normal row that uses it
# score in the thousands (docs/anomaly.md, "pca's variance floor", gives the measurement).
RELATIVE_FLOOR = 0.03
# Components recorded in the metric history (the spectrum of very wide data is cut here).
MAX_SERIES = 1000


@register_kind(spec=PcaSpec, serves=SERVES, servable="ml.reduction.pca_model:PcaServable")
def run(spec: PcaSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
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
    full, kept = fit_components(x_fit, p, reporter)
    k, method = len(kept.components), kept.method
    model = PcaModel(kept.mean, kept.components, kept.explained_variance, p.whiten)
    x_cal = scaled(parts.calibration)
    held_out = x_cal if len(x_cal) else x_fit
    model.residual_variance = residual_variance(model, x_fit, x_cal).astype(dtype)
    normal_scores = model.score(held_out)
    calibration = calibrate(p, normal_scores, "standardized_reconstruction_error")
    cut = calibration["threshold"]
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
    outcome = model_outcome(
        {"pca": path},
        rows.feature_shape,
        scaler,
        SERVES,
        calibration=calibration,
        evaluation=evaluation,
    )
    keep_reference(outcome, x_fit, p.seed, path.parent)
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


def residual_variance(model: PcaModel, x_fit: np.ndarray, x_cal: np.ndarray) -> np.ndarray:
    """Per-feature variance of the residual on the fitted and calibration rows, floored at
    RELATIVE_FLOOR of its mean over features (and at VARIANCE_FLOOR)."""
    variance = np.concatenate([model.residual(x_fit), model.residual(x_cal)]).var(axis=0)
    return np.maximum(variance, max(RELATIVE_FLOOR * float(variance.mean()), VARIANCE_FLOOR))


def fit_components(
    x: np.ndarray, params: PcaParams, reporter: Reporter
) -> tuple[Decomposition, Decomposition]:
    """The decomposition of the rows x (its spectrum recorded) and the components kept of it."""
    n, d = x.shape
    wanted = params.n_components
    method = resolve_method(params.method, wanted, n, d)
    reporter.progress(0.1, method=method)
    full = decompose(
        x,
        method=method,
        # randomized only ever for an int n_components (the params' check, `resolve_method`)
        n_components=wanted if method == "randomized" and isinstance(wanted, int) else None,
        oversamples=params.oversamples,
        power_iterations=params.power_iterations,
        seed=params.seed,
    )
    spectrum_points(full, reporter)
    k = wanted if isinstance(wanted, int) else components_for(wanted, full.ratio)
    return full, full.keep(k)


@dataclass
class Parts:
    fit: np.ndarray  # indices of the rows the components are fitted on (normal rows only)
    calibration: np.ndarray  # held-out normal rows: the score threshold
    evaluation: np.ndarray  # labelled rows held out for ROC-AUC
    truth: np.ndarray | None  # True = anomaly, for the evaluation rows
    # labelled anomalies outside the evaluation rows: no member fits them (an ensemble's selection)
    known_anomalies: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


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
                known_anomalies=np.setdiff1d(np.flatnonzero(truth), parts.evaluation),
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


def _device() -> str:
    import tensorflow as tf

    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
