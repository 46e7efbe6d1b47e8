"""The parts of a job spec that every kind shares.

Each kind subclasses :class:`JobSpec` with ``kind: Literal["<name>"]`` and its own ``params``
model; the service builds the discriminated union from the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from ml.core.sizing import SizeEstimate


class StrictModel(BaseModel):
    """Refuses unknown fields (a misspelt parameter is an error) and non-finite numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def too_many_clusters(k: int, rows: int, name: str = "n_clusters") -> str | None:
    """Why `k` clusters cannot be made of `rows` rows, or None."""
    if k <= rows:
        return None
    return f"{name} = {k} is more than the {rows} rows of the data set: ask for at most {rows}"


MAX_DEVICES = 16


class Resources(StrictModel):
    gpu: bool = Field(False, description="Run on the `gpu` queue (any device in embedded mode).")
    devices: int = Field(
        1,
        ge=1,
        le=MAX_DEVICES,
        description="Devices of one worker to train on, data-parallel "
        "(`tf.distribute.MirroredStrategy`): the worker's first N GPUs, or its CPU split into N "
        "logical devices when it has no GPU (same results, no speed-up). `training.batch_size` "
        "is the global batch, split between them. Kinds trained by the shared training loop only.",
    )
    mixed_precision: bool = Field(
        False,
        description="Compute in bfloat16 with float32 weights (Keras policy `mixed_bfloat16`; "
        "no loss scaling needed); faster on GPUs and CPUs with bfloat16 units. Models serve in "
        "the same precision. Kinds trained by the shared training loop only.",
    )


ScaleName = Literal["minmax", "standard", "none"]


class Preprocessing(StrictModel):
    """How inputs are scaled: fitted on the training split, stored with the model, and applied
    again at inference so that clients send raw rows. Trained kinds' specs include it."""

    scale: ScaleName = Field(
        "standard",
        description="`minmax`: each feature to [0, 1]; `standard`: zero mean, unit variance; "
        "`none`: as given.",
    )
    per_feature: bool | None = Field(
        None,
        description="One scale per feature, or one for all values; default: per feature for "
        "tables, one for all pixels of images (rank-3 rows and up).",
    )


def preprocessing_field(scale: ScaleName = "standard") -> Any:
    """A `preprocessing` field whose default scale suits the kind, e.g. `minmax` for a
    Bernoulli VAE: ``preprocessing: Preprocessing = preprocessing_field("minmax")``."""
    return Field(
        default_factory=lambda: Preprocessing(scale=scale),
        description=f"Input scaling, fitted on the training split (default scale: {scale}).",
    )


class JobSpec(StrictModel):
    """Fields every job spec carries; subclasses narrow `kind` and add `params`."""

    kind: str
    name: str | None = Field(
        None, max_length=200, description="A label for people; defaults to `<kind>-<id prefix>`."
    )
    dataset: str | None = Field(
        None, max_length=300, description="`builtin:<name>` or an uploaded data set's id."
    )
    resources: Resources = Field(default_factory=Resources)
    priority: int = Field(5, ge=0, le=9, description="0 (lowest) to 9 (highest).")

    example: ClassVar[dict[str, Any]] = {}
    # True for kinds trained by the shared training loop, which can use `resources.devices` and
    # `resources.mixed_precision`.
    distributable: ClassVar[bool] = False

    @model_validator(mode="after")
    def _check_resources(self) -> JobSpec:
        r = self.resources
        if not self.distributable and (r.devices > 1 or r.mixed_precision):
            raise ValueError(
                f"kind {self.kind!r} runs on one device in full precision: "
                "resources.devices must be 1 and resources.mixed_precision false"
            )
        return self

    def data_problem(self, rows: int, features: int) -> str | None:
        """Why this job cannot run on a data set of `rows` rows and `features` features (None
        when it can). The service asks at submit time, knowing every data set's shape (422);
        the worker checks the loaded data again."""
        return None

    def size_estimate(self, rows: int, row_shape: tuple[int, ...]) -> SizeEstimate | None:
        """This job's parameters and peak memory on `rows` rows of `row_shape`, by the spec
        fields that set them (`ml.core.sizing`), or None when the kind has none worth checking.
        Pure arithmetic: the service asks at submit time and refuses a job over the limits."""
        return None

    MODELS_FIELD: ClassVar[str] = "params.models"  # where `model_refs` come from
    MODELS_SERVE: ClassVar[str] = "score"  # what each of them must serve

    def model_refs(self) -> list[str]:
        """Registered models the job reads (ids, names or name@version). The service resolves
        them for the caller at submit (422 when one is not theirs or cannot serve the job) and
        stores the spec with them pinned to ids (`with_models`); the worker hands the models'
        files to the run (`RunContext.models`)."""
        return []

    def with_models(self, ids: list[str]) -> JobSpec:
        """This spec with `model_refs` replaced, in order, by the ids they resolved to."""
        return self

    @property
    def queue(self) -> str:
        return "gpu" if self.resources.gpu else "cpu"


def full_example(kind: str, name: str, params: type[BaseModel], **chosen: Any) -> dict[str, Any]:
    """An example job of `kind` whose params are written out in full: `chosen` values, and the
    defaults of `params` for the rest (derived defaults, None until resolved, are left out).
    The published example then shows every parameter without restating a default here."""
    values = params.model_validate(chosen).model_dump(mode="json", exclude_none=True)
    return {"kind": kind, "name": name, "params": values}
