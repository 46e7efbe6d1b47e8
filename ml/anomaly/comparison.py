"""Kind `detector_comparison`: several anomaly detectors trained on one data set with the same
splits, preprocessing and calibration, each run as its own kind would run it (`detector`, `pca`,
`autoencoder`, `vae`) and scored on the same held-out rows: per detector ROC-AUC and PR-AUC on
the labelled rows (or, without labels, its calibration statistics), a ranking, and the ROC
picture. The comparison is a report: it serves no operation."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ml.anomaly.autoencoder import AnomalyThreshold
from ml.anomaly.scoring import evaluate
from ml.core.registry import PlotLayout, get_kind, register_kind
from ml.core.reporting import (
    CPU,
    JobFailed,
    ModelOutcome,
    Reporter,
    RunContext,
    RunOutcome,
)
from ml.core.serving import scores_of
from ml.core.sizing import SizeEstimate
from ml.core.spec import JobSpec, Preprocessing, preprocessing_field
from ml.reduction import shared as reduction
from ml.reduction.pca import split

Detector = Literal[
    "isolation_forest",
    "one_class_svm",
    "local_outlier_factor",
    "ecod",
    "pca",
    "autoencoder",
    "vae",
]
CLASSICAL: list[Detector] = ["isolation_forest", "one_class_svm", "local_outlier_factor", "ecod"]
DEEP = ("autoencoder", "vae")
SHARED = ("contamination", "target_fpr", "normal_label", "anomaly_label", "evaluation_split")
FIELD = "params.detectors"


class ComparisonParams(AnomalyThreshold):
    detectors: list[Detector] = Field(
        default_factory=lambda: list(CLASSICAL),
        min_length=1,
        max_length=7,
        description="The detectors to compare: the `detector` kind's methods, `pca`, "
        "`autoencoder` and `vae` (each with its kind's defaults).",
    )
    epochs: int = Field(30, ge=1, le=500, description="autoencoder, vae: training epochs.")
    seed: int = Field(0, ge=0, lt=2**31, description="Splits, and each detector's seed.")
    validation_split: float = Field(
        0.1, ge=0, lt=1, description="Normal rows held out to calibrate each threshold."
    )

    @model_validator(mode="after")
    def _check(self) -> ComparisonParams:
        if len(set(self.detectors)) != len(self.detectors):
            raise ValueError("each detector once")
        if self.normal_label is not None and self.anomaly_label is not None:
            raise ValueError("give normal_label or anomaly_label, not both")
        return self


class ComparisonSpec(JobSpec):
    """Anomaly detectors compared on one data set: ROC-AUC, PR-AUC and the ROC picture."""

    kind: Literal["detector_comparison"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: ComparisonParams = Field(default_factory=ComparisonParams)
    preprocessing: Preprocessing = preprocessing_field("standard")

    def members(self) -> dict[str, JobSpec]:
        """Each detector's own job spec, sharing this one's data, splits and calibration."""
        return {name: member_spec(self, name) for name in self.params.detectors}

    def data_problem(self, rows: int, features: int) -> str | None:
        for name, member in self.members().items():
            problem = member.data_problem(rows, features)
            if problem is not None:
                return f"{name}: {problem}"
        return None

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate | None:
        """The costliest detector's (they run one after another), its fields named as ours."""
        estimates = [m.size_estimate(rows, row_shape) for m in self.members().values()]
        known = [e for e in estimates if e is not None]
        if not known:
            return None
        worst, estimate = max(known, key=lambda e: e.total_memory), SizeEstimate()
        for name, count in worst.parameters.items():
            estimate.add_parameters(own_field(name), count)
        for name, size in worst.memory.items():
            estimate.add_memory(own_field(name), size)
        return estimate


def own_field(name: str, field: str = FIELD) -> str:
    """A member's size field as the composite's: `field`, but for the shared runtime and data."""
    return name if name in ("runtime", "dataset") else field


def member_spec(spec: Any, name: str, own: dict[str, Any] | None = None) -> JobSpec:
    """The job spec of detector `name` inside `spec` (a comparison or an ensemble): its `own`
    params, and the data, splits, seed and calibration of `spec`, which every member shares."""
    p = spec.params
    params: dict[str, Any] = {**(own or {}), **{key: getattr(p, key) for key in SHARED}}
    body: dict[str, Any] = {"dataset": spec.dataset, "preprocessing": spec.preprocessing}
    if name in DEEP:
        training = {"epochs": p.epochs, "seed": p.seed, "validation_split": p.validation_split}
        body |= {"kind": name, "params": params, "training": training}
    else:
        params |= {"seed": p.seed, "validation_split": p.validation_split}
        if name != "pca":
            params["method"] = name
        body |= {"kind": "pca" if name == "pca" else "detector", "params": params}
    return get_kind(body["kind"]).spec.model_validate(body)


ComparisonSpec.example = {
    "kind": "detector_comparison",
    "name": "breast-cancer-detectors",
    "dataset": "builtin:breast_cancer",
    "params": {"detectors": [*CLASSICAL, "pca"], "contamination": 0.05},
    "preprocessing": {"scale": "standard"},
}


class MemberReporter:
    """Reports one detector's progress as its share of the comparison's; its metric points and
    checkpoints stay with it (a comparison restarts from its first detector)."""

    def __init__(self, parent: Reporter, index: int, count: int, name: str) -> None:
        self.parent, self.index, self.count, self.name = parent, index, count, name

    def metrics(self, step: int, values: Any) -> None:
        pass

    def progress(self, fraction: float, **info: Any) -> None:
        done = (self.index + min(max(fraction, 0.0), 1.0)) / self.count
        self.parent.progress(0.95 * done, detector=self.name)

    def checkpoint(self) -> None:
        pass


@register_kind(
    spec=ComparisonSpec,
    category="model",
    pictures=frozenset({"roc"}),
    servable="ml.anomaly.comparison_model:ComparisonServable",
    plot=PlotLayout("detector (its place in params.detectors)", {"seconds": "s"}),
)
def run(spec: ComparisonSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.anomaly import comparison_model as cm

    rows = reduction.load_rows(context, "detector_comparison")
    parts = split(rows, spec.params)
    labelled = parts.truth is not None and bool(parts.truth.any()) and not parts.truth.all()
    held_out = parts.evaluation if labelled else parts.calibration
    if len(held_out) == 0:
        raise JobFailed("invalid_data", "no rows are held out to compare the detectors on")
    members = spec.members()
    records, curves, devices = [], [], set()
    for i, (name, member) in enumerate(members.items()):
        sub = MemberReporter(reporter, i, len(members), name)
        record, scores, device = run_member(name, member, sub, context, rows.raw[held_out])
        devices.add(device)
        if labelled:
            assert parts.truth is not None
            record |= {k: v for k, v in evaluate(scores, parts.truth, record["threshold"]).items()}
            curves.append(cm.roc_curve(parts.truth, scores))
        else:
            flagged = float(np.mean(scores > record["threshold"]))
            record |= {"normal_score_mean": float(scores.mean()), "flagged_share": flagged}
        reporter.metrics(i + 1, {k: record[k] for k in ("roc_auc", "pr_auc") if k in record})
        reporter.metrics(i + 1, {"seconds": record["seconds"]})
        records.append(record)
    result = summary(records, labelled, len(held_out))
    model = None
    if labelled:
        names = [r["detector"] for r in records]
        aucs = [r["roc_auc"] for r in records]
        path = cm.save_curves(context.workdir / "model" / cm.CURVES_FILE, names, curves, aucs)
        model = ModelOutcome(
            files={"roc": path},
            input_shape=list(rows.feature_shape),
            capabilities=[],
            evaluation={"detectors": records, "best": result["best"]},
            pictures=["roc"],
        )
    reporter.progress(1.0)
    device = CPU if devices <= {CPU} else ",".join(sorted(devices - {CPU}))
    return RunOutcome(result=result, device=device, model=model)


def run_member(
    name: str, member: JobSpec, reporter: MemberReporter, context: RunContext, rows: np.ndarray
) -> tuple[dict[str, Any], np.ndarray, str]:
    """Train one detector as its kind does and score the held-out rows with the served model."""
    folder = context.workdir / "members" / name
    started = time.perf_counter()
    try:
        trained = train_member(member, reporter, folder, context)
        scores = trained.score(rows)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    record = {
        "detector": name,
        "kind": member.kind,
        "seconds": time.perf_counter() - started,
        "threshold": float(trained.model.calibration["threshold"]),
        "calibration_rows": int(trained.model.calibration["calibration_rows"]),
    }
    return record, scores, trained.device


@dataclass
class Trained:
    """A member trained as its kind trains it: its model (files under the member's folder),
    that model loaded as it is served, and the device it ran on."""

    model: ModelOutcome
    servable: Any
    device: str

    @property
    def meta(self) -> dict[str, Any]:
        return model_meta(self.model)

    def score(self, raw_rows: np.ndarray) -> np.ndarray:
        return scores_of(self.servable, raw_rows)


def model_meta(model: ModelOutcome) -> dict[str, Any]:
    """What a servable reads from the models row, for a model not stored yet."""
    return {
        "input_shape": model.input_shape,
        "preprocessing": model.preprocessing,
        "calibration": model.calibration,
        "capabilities": model.capabilities,
    }


def train_member(
    member: JobSpec, reporter: MemberReporter, folder: Path, context: RunContext
) -> Trained:
    kind = get_kind(member.kind)
    sub = RunContext(folder / "work", folder / "checkpoint", context.dataset)
    sub.workdir.mkdir(parents=True, exist_ok=True)
    sub.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    outcome = kind.run(member, reporter, sub)
    model = outcome.model
    if model is None or kind.load is None or "score" not in model.capabilities:
        raise JobFailed("invalid_data", f"kind {member.kind} trained no model that scores")
    return Trained(model, kind.load(model.files, model_meta(model)), outcome.device)


def summary(records: list[dict[str, Any]], labelled: bool, rows: int) -> dict[str, Any]:
    """The result: every detector's record, best first when the rows are labelled."""
    if labelled:
        ranked = sorted(records, key=lambda r: -r["roc_auc"])
        return {
            "detectors": ranked,
            "best": ranked[0]["detector"],
            "ranking": [r["detector"] for r in ranked],
            "labelled": True,
            "evaluation_rows": rows,
        }
    return {"detectors": records, "best": None, "labelled": False, "calibration_rows": rows}
