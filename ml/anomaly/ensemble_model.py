"""An ensemble's maths and serving: each member's score standardised by what it gave on the
held-out normal rows, combined (mean or max) into one score. The members are served by their
own kinds' servables, loaded from the ensemble's files (`m<i>_<name>`) and the meta stored in
its calibration; nothing but arrays and JSON is read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.core.registry import get_kind
from ml.core.serving import UnsupportedOperation, calibrated_threshold, score_answer, scores_of

SCALE_FLOOR = 1e-12  # a member whose held-out scores are all equal divides by this
MAX_REFERENCE = 2001  # held-out scores kept for `rank` (beyond: their quantiles)


@dataclass
class Standardiser:
    """`zscore`: (s − mean) / sd of the held-out normal scores; `rank`: the share of them
    below s, (count(< s) + count(= s) / 2) / n (the mid-rank, in [0, 1])."""

    method: str
    centre: float = 0.0
    scale: float = 1.0
    reference: np.ndarray | None = None  # sorted held-out scores, for `rank`

    @classmethod
    def fit(cls, normal_scores: np.ndarray, method: str) -> Standardiser:
        s = np.asarray(normal_scores, np.float64)
        if method == "rank":
            reference = np.sort(s)
            if len(reference) > MAX_REFERENCE:  # bounded in the models row: its quantiles
                reference = np.quantile(reference, np.linspace(0, 1, MAX_REFERENCE))
            return cls(method, reference=reference)
        return cls(method, float(s.mean()), max(float(s.std()), SCALE_FLOOR))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        if self.method == "rank":
            assert self.reference is not None
            below = np.searchsorted(self.reference, scores, side="left")
            upto = np.searchsorted(self.reference, scores, side="right")
            return np.asarray((below + upto) / (2.0 * len(self.reference)))
        return np.asarray((scores - self.centre) / self.scale)

    def to_dict(self) -> dict[str, Any]:
        if self.method == "rank":
            assert self.reference is not None
            return {"method": "rank", "reference": self.reference.tolist()}
        return {"method": self.method, "centre": self.centre, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardiser:
        if data["method"] == "rank":
            return cls("rank", reference=np.asarray(data["reference"], np.float64))
        return cls(data["method"], float(data["centre"]), float(data["scale"]))


def member_meta(
    kind: str, detector: str, meta: dict[str, Any], standard: Standardiser
) -> dict[str, Any]:
    """What the ensemble stores of a member: its kind, its servable's meta, its standardiser."""
    return {"kind": kind, "detector": detector, "meta": meta, "standard": standard.to_dict()}


class Combination:
    """Members (each with a loaded `servable` and its `standard`) combined by mean or max."""

    def __init__(self, members: list[dict[str, Any]], combine: str) -> None:
        self.members = members
        self.combine = combine
        self.standards = [Standardiser.from_dict(m["standard"]) for m in members]

    def score(self, raw_rows: np.ndarray) -> np.ndarray:
        columns = [
            standard(scores_of(m["servable"], raw_rows))
            for m, standard in zip(self.members, self.standards, strict=True)
        ]
        stacked = np.stack(columns, axis=1)
        return np.asarray(stacked.max(axis=1) if self.combine == "max" else stacked.mean(axis=1))


class EnsembleServable:
    """score: the combined score of the members, with the ensemble's threshold."""

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.operations = list(meta.get("capabilities") or ["score"])
        calibration = meta.get("calibration") or {}
        self.threshold = calibrated_threshold(meta)
        members = []
        for i, stored in enumerate(calibration["members"]):
            prefix = f"m{i}_"
            own = {k[len(prefix) :]: v for k, v in files.items() if k.startswith(prefix)}
            kind = get_kind(stored["kind"])
            assert kind.load is not None
            members.append({**stored, "servable": kind.load(own, stored["meta"])})
        self.combination = Combination(members, str(calibration.get("combine", "mean")))

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation not in self.operations or operation != "score":
            raise UnsupportedOperation(operation, self.operations)
        assert inputs is not None
        scores = self.combination.score(np.asarray(inputs))
        return score_answer(scores, self.threshold)
