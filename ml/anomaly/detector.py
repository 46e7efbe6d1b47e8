"""Kind `detector`: the classical anomaly detectors (isolation forest, one-class SVM, local
outlier factor in novelty mode, ECOD) under the autoencoder's contract: the same splits and
preprocessing, a threshold calibrated on held-out normal rows (`contamination` or `target_fpr`),
ROC-AUC / PR-AUC on the labelled rows held out, and `score` served from arrays (the maths and
the stored model are in `ml.anomaly.detector_model`)."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ml.anomaly.autoencoder import AnomalyThreshold
from ml.anomaly.drift import keep_reference
from ml.anomaly.scoring import calibrate, evaluate
from ml.clustering.shared import model_outcome
from ml.core.registry import register_kind
from ml.core.reporting import CPU, JobFailed, Reporter, RunContext, RunOutcome
from ml.core.sizing import RUNTIME_BYTES, SizeEstimate
from ml.core.spec import JobSpec, Preprocessing, preprocessing_field
from ml.reduction import shared as reduction
from ml.reduction.pca import split

Method = Literal["isolation_forest", "one_class_svm", "local_outlier_factor", "ecod"]
# The parameters that only one method reads: setting one for another method is a mistake.
OWN_PARAMS = {
    "n_estimators": "isolation_forest",
    "max_samples": "isolation_forest",
    "nu": "one_class_svm",
    "gamma": "one_class_svm",
    "n_neighbors": "local_outlier_factor",
}
DEFAULT_TREES, DEFAULT_NU, DEFAULT_NEIGHBOURS = 100, 0.05, 20
MIN_FIT_ROWS = 8
ITEM = 8  # float64
DATA_COPIES = 4  # raw, scaled, the fit split and its subsample
LIBSVM_CACHE = 200 << 20  # scikit-learn's OneClassSVM cache_size (MB)
NEIGHBOUR_MEMORY = 128  # MiB of pairwise distances at a time while fitting the LOF
SCORING_MEMORY = 4 * 8 * (1 << 22)  # detector_model.BLOCK_VALUES, a few working copies


class DetectorParams(AnomalyThreshold):
    method: Method = Field(
        "isolation_forest",
        description="`isolation_forest`, `one_class_svm` (RBF kernel), `local_outlier_factor` "
        "(novelty mode) or `ecod` (empirical-CDF outlier detection, parameter-free).",
    )
    n_estimators: int | None = Field(
        None, ge=1, le=1000, description="isolation_forest: trees (default 100)."
    )
    max_samples: int | None = Field(
        None, ge=2, le=100_000, description="isolation_forest: rows per tree (default 256)."
    )
    nu: float | None = Field(
        None,
        gt=0,
        le=1,
        description="one_class_svm: bound on the share of margin errors (default 0.05).",
    )
    gamma: Literal["scale"] | float | None = Field(
        None,
        description="one_class_svm: RBF γ; `scale` (the default) = 1 / (features × variance of "
        "the scaled rows).",
    )
    n_neighbors: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="local_outlier_factor: neighbours (default 20; at most rows − 1).",
    )
    max_fit_rows: int = Field(
        20_000,
        ge=MIN_FIT_ROWS,
        le=100_000,
        description="one_class_svm, local_outlier_factor: fit on at most this many normal rows "
        "(a seeded sample), which bounds their quadratic cost and the stored model.",
    )
    seed: int = Field(0, ge=0, lt=2**31, description="Splits, subsamples and the forest.")
    validation_split: float = Field(
        0.1, ge=0, lt=1, description="Normal rows held out to calibrate the score threshold."
    )

    @model_validator(mode="after")
    def _check(self) -> DetectorParams:
        if self.normal_label is not None and self.anomaly_label is not None:
            raise ValueError("give normal_label or anomaly_label, not both")
        if isinstance(self.gamma, float) and not (0 < self.gamma <= 1e6):
            raise ValueError("gamma must be `scale` or a number in (0, 1e6]")
        # None is the method's default: a stored spec, written out in full, reads back
        for name, owner in OWN_PARAMS.items():
            if getattr(self, name) is not None and owner != self.method:
                raise ValueError(f"{name} applies to method {owner} only, not {self.method}")
        return self

    @property
    def trees(self) -> int:
        return self.n_estimators or DEFAULT_TREES

    @property
    def neighbours(self) -> int:
        return self.n_neighbors or DEFAULT_NEIGHBOURS

    def stored_values(self, rows: int, features: int) -> int:
        """The most values the fitted model keeps for `rows` normal rows of `features`."""
        fit = min(rows, self.max_fit_rows)
        if self.method == "isolation_forest":
            psi = min(self.max_samples or 256, rows)
            return self.trees * (2 * psi - 1) * 5
        if self.method == "one_class_svm":
            return fit * (features + 1)
        if self.method == "local_outlier_factor":
            return fit * (features + 2)
        return rows * features + features

    def work_memory(self, rows: int) -> int:
        """Bytes the method needs while fitting, beyond the rows and the model."""
        if self.method == "one_class_svm":
            return LIBSVM_CACHE + min(rows, self.max_fit_rows) * ITEM * 4
        if self.method == "local_outlier_factor":
            return (NEIGHBOUR_MEMORY << 20) + min(rows, self.max_fit_rows) * self.neighbours * 24
        return 0


class DetectorSpec(JobSpec):
    """Classical anomaly detectors (isolation forest, one-class SVM, LOF, ECOD)."""

    kind: Literal["detector"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: DetectorParams = Field(default_factory=DetectorParams)
    preprocessing: Preprocessing = preprocessing_field("standard")

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate:
        """The stored model's values; memory: the rows' copies, the model, the fit's work."""
        estimate, features = SizeEstimate(), math.prod(row_shape)
        stored = self.params.stored_values(rows, features)
        estimate.add_parameters("params.method", stored)
        estimate.add_memory("runtime", RUNTIME_BYTES)
        estimate.add_memory("dataset", DATA_COPIES * rows * features * ITEM)
        estimate.add_memory("params.method", 2 * stored * ITEM + SCORING_MEMORY)
        estimate.add_memory("params.method", self.params.work_memory(rows))
        return estimate


DetectorSpec.example = {
    "kind": "detector",
    "name": "breast-cancer-forest",
    "dataset": "builtin:breast_cancer",
    "params": {"method": "isolation_forest", "n_estimators": 100, "contamination": 0.05},
    "preprocessing": {"scale": "standard"},
}

SERVES = frozenset({"score"})


@register_kind(
    spec=DetectorSpec,
    serves=SERVES,
    servable="ml.anomaly.detector_model:DetectorServable",
)
def run(spec: DetectorSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.anomaly.detector_model import MODEL_FILE

    p = spec.params
    rows = reduction.load_rows(context, "detector")
    parts = split(rows, p)
    if len(parts.fit) < MIN_FIT_ROWS:
        raise JobFailed("invalid_data", f"only {len(parts.fit)} normal rows to fit the detector on")
    scaler = reduction.fit_scaler(spec, rows.raw[parts.fit])

    def scaled(idx: np.ndarray) -> np.ndarray:
        return reduction.flat(scaler, rows.raw[idx], np.float64)

    x_fit = scaled(parts.fit)
    reporter.progress(0.1, method=p.method, rows=len(x_fit))
    model = fit(p, x_fit)
    reporter.progress(0.7, method=p.method)
    x_cal = scaled(parts.calibration)
    held_out = model.score(x_cal if len(x_cal) else x_fit)
    calibration = calibrate(
        p,
        held_out,
        p.method,
        normal_score_mean=float(held_out.mean()),
        normal_score_std=float(held_out.std()),
    )
    evaluation: dict[str, Any] = {}
    if parts.truth is not None and len(parts.evaluation):
        scores = model.score(scaled(parts.evaluation))
        evaluation = evaluate(scores, parts.truth, calibration["threshold"])
    path = model.save(context.workdir / "model" / MODEL_FILE)
    outcome = model_outcome(
        {"detector": path},
        rows.feature_shape,
        scaler,
        SERVES,
        calibration=calibration,
        evaluation={"method": p.method, **evaluation},
    )
    keep_reference(outcome, x_fit, p.seed, path.parent)
    result = {
        "method": p.method,
        "rows": rows.rows,
        "fit_rows": len(x_fit),
        "features": rows.features,
        "stored_values": model.stored_values,
        "threshold": calibration["threshold"],
        **{k: v for k, v in evaluation.items() if k in ("roc_auc", "pr_auc")},
    }
    reporter.progress(1.0, method=p.method)
    return RunOutcome(result=result, device=CPU, model=outcome)


def fit(p: DetectorParams, x: np.ndarray) -> Any:
    """The fitted `DetectorModel` of the params' method on the scaled normal rows x."""
    import sklearn

    from ml.anomaly import detector_model as dm

    if p.method in ("one_class_svm", "local_outlier_factor"):
        x = x[reduction.subsample(len(x), p.max_fit_rows, p.seed)]
    if p.method == "isolation_forest":
        arrays = dm.fit_isolation_forest(x, p.trees, p.max_samples, p.seed)
    elif p.method == "one_class_svm":
        gamma = dm.rbf_gamma(x) if p.gamma in (None, "scale") else float(p.gamma)
        arrays = dm.fit_one_class_svm(x, p.nu or DEFAULT_NU, gamma)
    elif p.method == "local_outlier_factor":
        with sklearn.config_context(working_memory=NEIGHBOUR_MEMORY):
            arrays = dm.fit_local_outlier_factor(x, p.neighbours)
    else:
        arrays = dm.fit_ecod(x)
    return dm.DetectorModel(p.method, arrays)
