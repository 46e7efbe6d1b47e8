"""Kind `tsne`: parametric t-SNE (van der Maaten 2009). A dense network is trained through the
shared trainer (with its telemetry) so that its embedding keeps t-SNE's neighbourhoods; it encodes
new rows, records trustworthiness next to scikit-learn's TSNE, and draws the training embedding."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ml.anomaly.autoencoder import Activation
from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.spec import JobSpec, Preprocessing, StrictModel, preprocessing_field
from ml.core.training_config import OptimizerConfig, TrainingConfig


class TsneParams(StrictModel):
    n_components: Literal[2, 3] = Field(2, description="Dimension of the embedding.")
    perplexity: float = Field(
        30.0,
        ge=1,
        le=10_000,
        description="Effective number of neighbours kept per row; below the number of "
        "training rows (capped at a batch's rows − 1 within a batch).",
    )
    early_exaggeration: float = Field(
        12.0, ge=1, le=1000, description="α multiplying P during the first epochs."
    )
    exaggeration_epochs: int = Field(
        10, ge=0, le=100_000, description="Epochs trained on KL(αP‖Q) before α returns to 1."
    )
    hidden: list[int] = Field(
        default_factory=lambda: [256, 256], max_length=8, description="Network layer sizes."
    )
    activation: Activation = "relu"
    evaluation_rows: int = Field(
        1000,
        ge=11,
        le=20_000,
        description="Training rows (a random sample) on which trustworthiness is measured and "
        "scikit-learn's TSNE is run; its cost grows as rows².",
    )
    compare_sklearn: bool = Field(
        True, description="Run scikit-learn's TSNE on those rows (`sklearn_trustworthiness`)."
    )

    @model_validator(mode="after")
    def _check(self) -> TsneParams:
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden layer sizes must be positive")
        return self


class TsneTraining(TrainingConfig):
    """The usual `training` section; t-SNE's defaults: larger batches (P and Q are normalised
    over a batch, so a larger batch keeps more of each neighbourhood), more epochs, lr 0.003."""

    epochs: int = Field(100, ge=1, le=100_000)
    batch_size: int = Field(512, ge=2, le=65_536)
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig.model_validate({"learning_rate": 0.003})
    )


class TsneSpec(JobSpec):
    kind: Literal["tsne"]
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: TsneParams = Field(default_factory=TsneParams)
    training: TsneTraining = Field(default_factory=TsneTraining)
    preprocessing: Preprocessing = preprocessing_field("standard")

    @model_validator(mode="after")
    def _check(self) -> TsneSpec:
        p = self.params
        if p.early_exaggeration > 1 and p.exaggeration_epochs >= self.training.epochs:
            raise ValueError(
                f"exaggeration_epochs ({p.exaggeration_epochs}) must be below training.epochs "
                f"({self.training.epochs}): the last epochs fit the plain KL(P‖Q)"
            )
        return self


TsneSpec.example = {
    "kind": "tsne",
    "name": "digits-tsne",
    "dataset": "builtin:digits",
    "params": {
        "n_components": 2,
        "perplexity": 30,
        "early_exaggeration": 12,
        "exaggeration_epochs": 5,
        "hidden": [256, 256],
        "evaluation_rows": 500,
    },
    "preprocessing": {"scale": "standard"},
    "training": {"epochs": 25, "batch_size": 512, "seed": 0},
}

SERVES = frozenset({"encode"})


@register_kind(
    name="tsne",
    spec=TsneSpec,
    summary="Parametric t-SNE: a network that embeds new rows, with its embedding picture.",
    category="model",
    serves=SERVES,
    pictures=frozenset({"embedding"}),
    servable="ml.tsne:TsneServable",
)
def run(spec: TsneSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.tsne import train_tsne

    return train_tsne(spec, reporter, context)
