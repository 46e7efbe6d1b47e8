"""What the generative kinds (`gan`, `diffusion`) share: data splits with two held-out halves
for sample quality, the evaluation at the end of training, and the serving side's `generate`
options and `samples` picture. NumPy only; each kind brings its own TensorFlow parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.core.preprocessing import Scaler
from ml.core.reporting import JobFailed, ModelOutcome, RunContext
from ml.core.serving import UnsupportedOperation, png
from ml.core.splits import split_indices

REFERENCE_ROWS = 1000  # held-out real rows stored with a model for its samples picture
PICTURE_SEED = 0


@dataclass
class GenerativeData:
    train: np.ndarray  # scaled
    validation: np.ndarray  # scaled
    train_raw: np.ndarray
    held_out_a: np.ndarray  # raw units: generated samples are compared with these ...
    held_out_b: np.ndarray  # ... and so are these, for the floor
    labels: np.ndarray | None  # class labels of the training rows, if the data set has them
    scaler: Scaler

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train.shape[1:])

    @property
    def images(self) -> bool:
        return len(self.input_shape) == 3


def prepare(spec: Any, context: RunContext, evaluation_split: float) -> GenerativeData:
    """Split rows into training, validation and an evaluation part cut into two halves, all
    reproducible from `training.seed`; fit the spec's scaler on the training rows."""
    data = context.dataset
    if data is None:
        raise JobFailed("invalid_data", "this kind needs a data set (`dataset` in the spec)")
    x = np.asarray(data.x, dtype=np.float32)
    if x.ndim == 3:  # (rows, H, W): grey images, add the channel axis
        x = x[..., None]
    if x.ndim not in (2, 4):
        raise JobFailed("invalid_data", f"rows of shape {list(x.shape[1:])} are not supported")
    seed = spec.training.seed
    try:
        parts = split_indices(len(x), spec.training.validation_split, evaluation_split, seed)
    except ValueError as exc:
        raise JobFailed("invalid_data", str(exc)) from exc
    if len(parts.train) < 16:
        raise JobFailed("invalid_data", f"only {len(parts.train)} training rows")
    held = np.random.default_rng([seed, 1]).permutation(parts.evaluation)
    half = len(held) // 2
    scaler = Scaler.from_spec(spec.preprocessing).fit(x[parts.train])
    labels = None
    if data.y is not None and getattr(data, "label_type", None) == "class":
        labels = np.asarray(data.y)[parts.train]

    def scaled(idx: np.ndarray) -> np.ndarray:
        return scaler.transform(x[idx]).astype(np.float32)

    return GenerativeData(
        train=scaled(parts.train),
        validation=scaled(parts.validation),
        train_raw=x[parts.train],
        held_out_a=x[np.sort(held[:half])],
        held_out_b=x[np.sort(held[half : 2 * half])],
        labels=labels,
        scaler=scaler,
    )


def sample_quality(
    data: GenerativeData, generated: np.ndarray, seed: int, classifier: Any = None
) -> dict[str, Any]:
    """The model's samples (raw units) against held-out half A, beside half B against A;
    `classifier`: an image feature classifier already fitted (else one is fitted here)."""
    from ml.generative import sample_quality as sq

    if len(data.held_out_a) < 2:
        return {}
    return sq.evaluate(
        generated,
        data.held_out_a,
        data.held_out_b,
        data.train_raw,
        data.labels,
        images=data.images,
        seed=seed,
        classifier=classifier,
    )


def save_reference(data: GenerativeData, folder: Path) -> Path:
    """Held-out real rows (raw units) to draw beside the samples."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reference.npz"
    np.savez(path, x=data.held_out_a[:REFERENCE_ROWS].astype(np.float32))
    return path


def model_outcome(
    data: GenerativeData,
    context: RunContext,
    network: tuple[str, str, Any],
    *,
    capabilities: list[str],
    calibration: dict[str, Any],
    evaluation: dict[str, Any],
) -> ModelOutcome:
    """Save the served network, `(file key, file name, Keras model)`, and the reference rows
    in the job's `model` folder; the model as a run's outcome names it."""
    key, name, model = network
    folder = context.workdir / "model"
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / name)
    return ModelOutcome(
        files={key: folder / name, "reference": save_reference(data, folder)},
        input_shape=list(data.input_shape),
        capabilities=capabilities,
        preprocessing=data.scaler.to_dict(),
        calibration=calibration,
        evaluation=evaluation,
        pictures=["samples"],
    )


def result_quality(quality: dict[str, Any]) -> dict[str, Any]:
    """The sample-quality numbers a job's result repeats (not the per-sample lists)."""
    return {k: v for k, v in quality.items() if not k.startswith(("generated", "evaluation"))}


def draw_samples(samples: np.ndarray, reference: np.ndarray | None, title: str) -> bytes:
    """A grid of images, or a scatter of the first two features (with real rows in grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if samples.ndim == 4:
        count = min(len(samples), 64)
        side = int(np.ceil(np.sqrt(count)))
        figure, axes = plt.subplots(side, side, figsize=(side, side))
        low, high = (
            (float(reference.min()), float(reference.max()))
            if reference is not None and len(reference)
            else (float(samples.min()), float(samples.max()))
        )
        for i, ax in enumerate(np.asarray(axes).reshape(-1)):
            ax.axis("off")
            if i >= count:
                continue
            if samples.shape[-1] == 1:  # grey, in the real data's range
                ax.imshow(samples[i, ..., 0], cmap="gray_r", vmin=low, vmax=high)
            else:
                ax.imshow(np.clip((samples[i] - low) / max(high - low, 1e-12), 0, 1))
        figure.suptitle(title)
        return png(figure)
    flat = samples.reshape(len(samples), -1)
    figure, ax = plt.subplots(figsize=(5, 5))
    if reference is not None and len(reference):
        ref = reference.reshape(len(reference), -1)
        if ref.shape[1] >= 2:
            ax.scatter(ref[:, 0], ref[:, 1], s=3, c="0.7", label="held-out real")
    if flat.shape[1] >= 2:
        ax.scatter(flat[:, 0], flat[:, 1], s=3, c="tab:blue", label="generated")
        ax.set_xlabel("feature 0")
        ax.set_ylabel("feature 1")
    else:
        ax.hist(flat[:, 0], bins=50, color="tab:blue", alpha=0.7, density=True, label="generated")
        ax.set_xlabel("feature 0")
    ax.legend(loc="best", markerscale=3)
    ax.set_title(title)
    return png(figure)


class GenerativeServable:
    """Base of the gan and diffusion servables: `generate` options, the `samples` picture.

    Subclasses implement `_generate_scaled(n, rng, **options)` returning samples in the scaled
    units the model works in; this class maps them back to the data's own units.
    """

    title = "samples"

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.scaler = Scaler.from_dict(meta.get("preprocessing") or {"scale": "none"})
        self.calibration = dict(meta.get("calibration") or {})
        self.operations = list(meta.get("capabilities") or ["generate"])
        self.reference: np.ndarray | None = None
        if "reference" in files:
            with np.load(files["reference"], allow_pickle=False) as saved:
                self.reference = saved["x"]
        self._pictures: dict[str, bytes] = {}

    def _generate_scaled(self, n: int, rng: np.random.Generator, **options: Any) -> np.ndarray:
        raise NotImplementedError

    def to_data_units(self, scaled: np.ndarray) -> np.ndarray:
        return self.scaler.inverse_transform(scaled.astype(np.float32))

    def generate(self, n: int = 16, seed: int | None = None, **options: Any) -> dict[str, Any]:
        if n < 1:
            raise ValueError("n must be at least 1")
        rng = np.random.default_rng(seed)
        return {"samples": self.to_data_units(self._generate_scaled(int(n), rng, **options))}

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation not in self.operations:
            raise UnsupportedOperation(operation, self.operations)
        if operation == "generate":
            return self.generate(**options)
        return self.answer(operation, inputs, **options)

    def answer(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        raise UnsupportedOperation(operation, self.operations)

    def picture(self, name: str, **options: Any) -> bytes:
        if name != "samples":
            raise ValueError(f"no picture {name!r}; this model draws: samples")
        if name not in self._pictures:  # drawn once per loaded model, from a fixed seed
            n = 64 if len(self.input_shape) == 3 else REFERENCE_ROWS
            samples = self.generate(n=n, seed=PICTURE_SEED)["samples"]
            self._pictures[name] = draw_samples(samples, self.reference, self.title)
        return self._pictures[name]
