"""Kind `ensemble`: several anomaly detectors trained in one job on the same rows (each as its
own kind trains it), their scores standardised on the held-out normal rows and combined into one
score with one calibrated threshold, served like any detector (`ml.anomaly.ensemble_model`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, StringConstraints, ValidationError, model_validator

from ml.anomaly import drift
from ml.anomaly.autoencoder import AnomalyThreshold
from ml.anomaly.comparison import Detector as DetectorName
from ml.anomaly.comparison import MemberReporter, member_spec, own_field, train_member
from ml.anomaly.scoring import calibrate, evaluate
from ml.core.registry import get_kind, register_kind
from ml.core.reporting import CPU, JobFailed, ModelOutcome, Reporter, RunContext, RunOutcome
from ml.core.sizing import SizeEstimate
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field
from ml.reduction import shared as reduction
from ml.reduction.pca import split

MIN_CALIBRATION_ROWS = 8
MAX_MEMBERS = 8
FIELD = "params.members"


class Member(StrictModel):
    detector: DetectorName = Field(
        description="A `detector` method, `pca`, `autoencoder` or `vae`."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="The member kind's own params (e.g. `n_estimators`, `hidden`); the data, "
        "splits, seed and calibration are the ensemble's.",
    )


ModelRef = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)]


class EnsembleParams(AnomalyThreshold):
    members: list[Member] = Field(
        default_factory=list,
        max_length=MAX_MEMBERS,
        description="Detectors trained in this job, on the ensemble's rows.",
    )
    models: list[ModelRef] = Field(
        default_factory=list,
        max_length=MAX_MEMBERS,
        description="Registered models that serve `score` (id, name or name@version), on rows "
        "of the data set's width; pinned to their ids at submit. Standardised on the "
        "ensemble's held-out normal rows like the members.",
    )
    standardise: Literal["zscore", "rank"] = Field(
        "zscore",
        description="`zscore`: (score − mean) / sd of the member's scores on the held-out normal "
        "rows; `rank`: the share of those scores below it.",
    )
    combine: Literal["mean", "max"] = Field("mean", description="Of the standardised scores.")
    epochs: int = Field(30, ge=1, le=500, description="autoencoder, vae: training epochs.")
    seed: int = Field(0, ge=0, lt=2**31, description="Splits, and each member's seed.")
    validation_split: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Normal rows held out to standardise the members and calibrate the threshold.",
    )

    @model_validator(mode="after")
    def _check(self) -> EnsembleParams:
        count = len(self.members) + len(self.models)
        if not 2 <= count <= MAX_MEMBERS:
            raise ValueError(
                f"an ensemble combines 2 to {MAX_MEMBERS} detectors (members and models "
                f"together); this one has {count}"
            )
        if self.normal_label is not None and self.anomaly_label is not None:
            raise ValueError("give normal_label or anomaly_label, not both")
        for own in (m.params for m in self.members):
            if set(own) & {"seed", "validation_split", "contamination", "target_fpr"}:
                raise ValueError(
                    "a member's params cannot set seed, validation_split, contamination or "
                    "target_fpr: the ensemble's apply to every member"
                )
        return self


class EnsembleSpec(JobSpec):
    """Anomaly detectors trained together, their standardised scores combined."""

    kind: Literal["ensemble"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: EnsembleParams
    preprocessing: Preprocessing = preprocessing_field("standard")

    @model_validator(mode="after")
    def _members_are_valid(self) -> EnsembleSpec:
        for i, m in enumerate(self.params.members):
            try:
                member_spec(self, m.detector, m.params)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"members.{i} ({m.detector}): {where}: {first['msg']}") from None
        return self

    def members(self) -> list[JobSpec]:
        return [member_spec(self, m.detector, m.params) for m in self.params.members]

    def model_refs(self) -> list[str]:
        return list(self.params.models)

    def with_models(self, ids: list[str]) -> EnsembleSpec:
        return self.model_copy(update={"params": self.params.model_copy(update={"models": ids})})

    def data_problem(self, rows: int, features: int) -> str | None:
        for i, member in enumerate(self.members()):
            problem = member.data_problem(rows, features)
            if problem is not None:
                return f"members.{i}: {problem}"
        return None

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate | None:
        """Every member's stored values; memory: the costliest member's training plus the
        others' models, which stay loaded."""
        estimates = [m.size_estimate(rows, row_shape) for m in self.members()]
        known = [e for e in estimates if e is not None]
        if not known:
            return None
        estimate = SizeEstimate()
        estimate.add_parameters(FIELD, sum(e.total_parameters for e in known))
        worst = max(known, key=lambda e: e.total_memory)
        for name, size in worst.memory.items():
            estimate.add_memory(own_field(name, FIELD), size)
        estimate.add_memory(FIELD, 8 * estimate.total_parameters)  # the others, loaded
        return estimate


EnsembleSpec.example = {
    "kind": "ensemble",
    "name": "breast-cancer-ensemble",
    "dataset": "builtin:breast_cancer",
    "params": {
        "members": [{"detector": "isolation_forest"}, {"detector": "ecod"}, {"detector": "pca"}],
        "standardise": "zscore",
        "combine": "mean",
        "contamination": 0.05,
    },
    "preprocessing": {"scale": "standard"},
}

SERVES = frozenset({"score"})


@register_kind(
    spec=EnsembleSpec,
    serves=SERVES,
    servable="ml.anomaly.ensemble_model:EnsembleServable",
)
def run(spec: EnsembleSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.anomaly import ensemble_model as em

    p = spec.params
    rows = reduction.load_rows(context, "ensemble")
    parts = split(rows, p)
    if len(parts.calibration) < MIN_CALIBRATION_ROWS:
        raise JobFailed(
            "invalid_data",
            f"only {len(parts.calibration)} normal rows held out to standardise the members: "
            "raise validation_split or give more rows",
        )
    calibration_rows = rows.raw[parts.calibration]
    members: list[dict[str, Any]] = []
    files: dict[str, Path] = {}
    devices: set[str] = set()

    def join(
        kind: str, name: str, meta: dict[str, Any], servable: Any, own: dict[str, Path]
    ) -> dict[str, Any]:
        """A member standardised on the held-out rows; its files (but its drift sample) kept."""
        scores = np.asarray(servable.run("score", calibration_rows)["scores"], np.float64)
        standard = em.Standardiser.fit(scores, p.standardise)
        member = em.member_meta(kind, name, meta, standard)
        members.append(member)
        prefix = f"m{len(members) - 1}_"
        files.update({prefix + k: path for k, path in own.items() if k != drift.REFERENCE})
        member["servable"] = servable  # dropped before the meta is stored
        return member

    started = time.perf_counter()
    for i, member in enumerate(spec.members()):
        name = p.members[i].detector
        sub = MemberReporter(reporter, i, len(p.members), name)
        trained = train_member(member, sub, context.workdir / "members" / f"m{i}", context)
        devices.add(trained.device)
        join(member.kind, name, trained.meta, trained.servable, trained.model.files)
    for registered in context.models:
        if tuple(registered.meta["input_shape"]) != tuple(rows.feature_shape):
            raise JobFailed(
                "invalid_data",
                f"model {registered.name} takes rows of shape {registered.meta['input_shape']}; "
                f"the data set's rows are {list(rows.feature_shape)}",
            )
        load = get_kind(registered.kind).load
        assert load is not None  # it serves score: checked at submit
        servable = load(registered.files, registered.meta)
        joined = join(registered.kind, registered.kind, registered.meta, servable, registered.files)
        joined |= {"model": registered.id, "model_name": registered.name}
    combined = em.Combination(members, p.combine)
    normal = combined.score(calibration_rows)
    score = f"{p.combine} of {p.standardise} member scores"
    calibration = calibrate(p, normal, score, combine=p.combine, members=members)
    cut = calibration["threshold"]
    evaluation: dict[str, Any] = {}
    if parts.truth is not None and len(parts.evaluation):
        evaluation = evaluate(combined.score(rows.raw[parts.evaluation]), parts.truth, cut)
    for m in members:
        m.pop("servable")  # in place: also out of the calibration's members
    model = ModelOutcome(
        files=files,
        input_shape=list(rows.feature_shape),
        capabilities=sorted(SERVES),
        preprocessing={"scale": "none"},  # each member applies its own
        calibration=calibration,
        evaluation=evaluation,
    )
    # The ensemble's rows are raw (each member scales its own): so is its reference sample.
    drift.keep_reference(model, rows.raw[parts.fit], p.seed, context.workdir / "model")
    result = {
        "members": [m.get("model_name", m["detector"]) for m in members],
        "seconds": time.perf_counter() - started,
        "threshold": cut,
        **{k: v for k, v in evaluation.items() if k in ("roc_auc", "pr_auc")},
    }
    reporter.progress(1.0)
    device = CPU if devices <= {CPU} else ",".join(sorted(devices - {CPU}))
    return RunOutcome(result=result, device=device, model=model)
