"""Kind `ensemble`: several anomaly detectors trained in one job on the same rows (each as its
own kind trains it), their scores standardised on the held-out normal rows and combined into one
score with one calibrated threshold, served like any detector (`ml.anomaly.ensemble_model`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, StringConstraints, ValidationError, model_validator

from ml.anomaly import drift, selection
from ml.anomaly.autoencoder import AnomalyThreshold
from ml.anomaly.comparison import Detector as DetectorName
from ml.anomaly.comparison import MemberReporter, member_spec, own_field, train_member
from ml.anomaly.scoring import calibrate, evaluate
from ml.core.registry import get_kind, register_kind
from ml.core.reporting import CPU, JobFailed, ModelOutcome, Reporter, RunContext, RunOutcome
from ml.core.serving import scores_of
from ml.core.sizing import SizeEstimate
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field
from ml.reduction import shared as reduction
from ml.reduction.pca import Parts, split

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
    selection: Literal["auto", "labelled", "none"] = Field(
        "auto",
        description="`labelled`: serve the subset of the detectors whose combination best "
        "ranks the data set's labelled anomalies outside the evaluation rows (which no member "
        "fits) above the held-out normal rows; `none`: combine them all; `auto`: `labelled` "
        f"when at least {selection.MIN_ANOMALIES} such anomalies exist, else `none`.",
    )
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


@dataclass
class Joined:
    """A member trained in the job or a registered model, loaded, before the ensemble keeps it:
    its scores on the held-out normal rows standardise it (`standard`, `normal`)."""

    kind: str
    name: str
    meta: dict[str, Any]
    servable: Any
    files: dict[str, Path]
    extra: dict[str, Any] = field(default_factory=dict)
    standard: Any = None  # an ensemble_model.Standardiser
    normal: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def scores(self, rows: np.ndarray) -> np.ndarray:
        return scores_of(self.servable, rows)

    def standardise(self, calibration_rows: np.ndarray, method: str) -> None:
        from ml.anomaly.ensemble_model import Standardiser

        scores = self.scores(calibration_rows)
        self.standard = Standardiser.fit(scores, method)
        self.normal = self.standard(scores)


def choose_members(
    joined: list[Joined], raw: np.ndarray, parts: Parts, p: EnsembleParams, reason: str | None
) -> selection.Choice:
    """Which members serve: all of them when there is a `reason` not to choose, else the
    subset chosen on the labelled rows."""
    if reason is not None:  # `labelled` was refused before the members trained
        return selection.everyone(len(joined), reason)
    known = parts.known_anomalies
    normal = np.stack([e.normal for e in joined], axis=1)
    normal = normal[selection.sample(np.arange(len(normal)), p.seed)]
    rows = raw[selection.sample(known, p.seed)]
    anomalous = np.stack([e.standard(e.scores(rows)) for e in joined], axis=1)
    names = [e.extra.get("model_name", e.name) for e in joined]  # a registered model's own
    return selection.choose(normal, anomalous, p.combine, names)


def join_members(
    spec: EnsembleSpec,
    feature_shape: tuple[int, ...],
    reporter: Reporter,
    context: RunContext,
    devices: set[str],
) -> list[Joined]:
    """The members trained in the job (their devices added to `devices`), then the registered
    models, loaded."""
    p = spec.params
    joined: list[Joined] = []
    for i, member in enumerate(spec.members()):
        name = p.members[i].detector
        sub = MemberReporter(reporter, i, len(p.members), name)
        trained = train_member(member, sub, context.workdir / "members" / f"m{i}", context)
        devices.add(trained.device)
        joined.append(
            Joined(member.kind, name, trained.meta, trained.servable, trained.model.files)
        )
    for registered in context.models:
        if tuple(registered.meta["input_shape"]) != tuple(feature_shape):
            raise JobFailed(
                "invalid_data",
                f"model {registered.name} takes rows of shape {registered.meta['input_shape']}; "
                f"the data set's rows are {list(feature_shape)}",
            )
        load = get_kind(registered.kind).load
        assert load is not None  # it serves score: checked at submit
        servable = load(registered.files, registered.meta)
        entry = Joined(
            registered.kind, registered.kind, registered.meta, servable, registered.files
        )
        entry.extra = {"model": registered.id, "model_name": registered.name}
        joined.append(entry)
    return joined


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
    reason = selection.problem(p.selection, len(parts.known_anomalies))
    if p.selection == "labelled" and reason is not None:  # before any member trains
        raise JobFailed(
            "invalid_data",
            f"selection labelled: {reason}; label more anomalies (anomaly_label / "
            "normal_label) or use selection none",
        )
    calibration_rows = rows.raw[parts.calibration]
    devices: set[str] = set()
    started = time.perf_counter()
    joined = join_members(spec, rows.feature_shape, reporter, context, devices)
    for entry in joined:
        entry.standardise(calibration_rows, p.standardise)
    choice = choose_members(joined, rows.raw, parts, p, reason)
    members: list[dict[str, Any]] = []
    files: dict[str, Path] = {}
    for entry in (joined[i] for i in choice.chosen):
        prefix = f"m{len(members)}_"
        # the member's files but its drift sample: the ensemble keeps its own
        files.update({prefix + k: f for k, f in entry.files.items() if k != drift.REFERENCE})
        members.append(
            {
                **em.member_meta(entry.kind, entry.name, entry.meta, entry.standard),
                **entry.extra,
                "servable": entry.servable,
            }
        )  # dropped before it is stored
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
        "selection": choice.record,
        "seconds": time.perf_counter() - started,
        "threshold": cut,
        **{k: v for k, v in evaluation.items() if k in ("roc_auc", "pr_auc")},
    }
    reporter.progress(1.0)
    device = CPU if devices <= {CPU} else ",".join(sorted(devices - {CPU}))
    return RunOutcome(result=result, device=device, model=model)
