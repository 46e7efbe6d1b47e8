"""Kind `pca`: principal components computed with TensorFlow (exact SVD, or a randomised range
finder for wide data); encodes rows, reconstructs them, and scores them by their standardised
distance to the principal subspace, with a threshold calibrated like the autoencoder's."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ml.anomaly.autoencoder import Labels
from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field

# A strict int: 1.0 is not read as "one component" (it would be a 100% variance target).
Components = (
    Annotated[int, Field(strict=True, ge=1, le=100_000)] | Annotated[float, Field(gt=0, lt=1)]
)


class PcaParams(StrictModel):
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
    contamination: float = Field(
        0.05,
        gt=0,
        lt=0.5,
        description="Expected anomaly share: the threshold is the (1 − c) quantile of held-out "
        "normal scores.",
    )
    target_fpr: float | None = Field(
        None, gt=0, lt=1, description="Set the threshold for this false-positive rate instead."
    )
    normal_label: Labels = Field(None, description="Label(s) of the normal class to fit on.")
    anomaly_label: Labels = Field(
        None, description="Label(s) of anomalies (default: the data set's anomaly class, if any)."
    )
    evaluation_split: float = Field(
        0.2, ge=0, lt=0.9, description="Labelled rows held out for ROC-AUC / PR-AUC."
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


PcaSpec.example = {
    "kind": "pca",
    "name": "digits-pca",
    "dataset": "builtin:digits",
    "params": {"n_components": 0.9, "whiten": False, "method": "auto"},
    "preprocessing": {"scale": "standard"},
}

SERVES = frozenset({"encode", "reconstruct", "score"})


@register_kind(
    name="pca",
    spec=PcaSpec,
    summary="Principal component analysis: projections, reconstructions and anomaly scores.",
    category="model",
    serves=SERVES,
    servable="ml.pca:PcaServable",
)
def run(spec: PcaSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.pca import train_pca

    return train_pca(spec, reporter, context)
