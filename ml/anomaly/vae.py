"""Kind `vae`: a variational autoencoder; its loss is a variational free energy
F = distortion + β·rate (−ELBO), its anomaly score the −ELBO of a row."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from ml.anomaly.autoencoder import AutoencoderParams
from ml.core.registry import register_kind
from ml.core.reporting import Reporter, RunContext, RunOutcome
from ml.core.serving import Servable
from ml.core.spec import JobSpec, Preprocessing, preprocessing_field
from ml.core.training_config import TrainingConfig


class VaeParams(AutoencoderParams):
    beta: float = Field(1.0, gt=0, description="Weight of the rate: a temperature on it.")
    likelihood: Literal["gaussian", "bernoulli"] = Field(
        "gaussian", description="Decoder likelihood; bernoulli needs inputs in [0, 1] (minmax)."
    )


class VaeSpec(JobSpec):
    kind: Literal["vae"]
    distributable: ClassVar[bool] = True
    dataset: str = Field(description="`builtin:<name>` or an uploaded data set's id.")
    params: VaeParams = Field(default_factory=VaeParams)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    preprocessing: Preprocessing = preprocessing_field("standard")


VaeSpec.example = {
    "kind": "vae",
    "name": "digits-vae",
    "dataset": "builtin:digits",
    "params": {"latent_dim": 8, "likelihood": "bernoulli", "architecture": "dense"},
    "preprocessing": {"scale": "minmax"},
    "training": {"epochs": 20, "batch_size": 64, "seed": 0},
}

SERVES = frozenset({"encode", "reconstruct", "score", "generate"})


def load(files: dict[str, Path], meta: dict[str, Any]) -> Servable:
    from ml.anomaly.autoencoding import AutoencodingServable

    return AutoencodingServable("vae", files, meta)


@register_kind(
    name="vae",
    spec=VaeSpec,
    summary="A variational autoencoder: encode, reconstruct, anomaly scores (−ELBO), samples.",
    category="model",
    serves=SERVES,
    load=load,
)
def run(spec: VaeSpec, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.anomaly.scoring import train_autoencoding
    from ml.core.training import job_devices

    with job_devices(spec.resources):
        return train_autoencoding("vae", spec, reporter, context, sorted(SERVES))
