"""Deep clustering, the driver DEC and DCN share (TensorFlow inside).

1. Pre-train a dense autoencoder (`AutoencoderObjective`) with the shared `Trainer`.
2. k-means in its latent space gives the first clustering.
3. Train again through the `Trainer` (so the training telemetry comes with it) on the method's
   objective, with the method's cluster update every `update_interval` optimizer steps (held
   fixed between updates); training stops early when fewer than `tol` of the rows changed
   cluster between two updates.

A method is a :class:`ClusterState`: its objective, its cluster update, the arrays it saves with
each checkpoint and its evaluation. Checkpoints are written at epoch ends and hold the cluster
state in force, so a resumed run goes on with the targets or centroids of the last update.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from ml.anomaly.autoencoder import AutoencoderParams
from ml.anomaly.autoencoding import AutoencoderObjective
from ml.anomaly.autoencoding import load_weights as load_autoencoder
from ml.anomaly.autoencoding import save_weights as save_autoencoder
from ml.clustering import shared as clustering
from ml.clustering.kmeans_tf import KMeans
from ml.core.preprocessing import Scaler
from ml.core.reporting import ModelOutcome, Reporter, RunContext, RunOutcome
from ml.core.serving import UnsupportedOperation
from ml.core.training import (
    CHECKPOINT_STATE,
    Callback,
    StopTraining,
    Trainer,
    configure_determinism,
    device_name,
)


def batched(fn: Any, x: np.ndarray, size: int = 4096) -> np.ndarray:
    parts = [fn(tf.constant(x[i : i + size])).numpy() for i in range(0, len(x), size)]
    return np.concatenate(parts)


class LatentObjective:
    """An objective on the latents of a pre-trained autoencoder's encoder."""

    def __init__(self, autoencoder: AutoencoderObjective) -> None:
        self.autoencoder = autoencoder
        self.signature = [tf.TensorSpec((None, autoencoder.input_shape[0]), tf.float32)]
        self._embed = tf.function(self.embed, input_signature=self.signature)

    def embed(self, x: tf.Tensor) -> tf.Tensor:
        return self.autoencoder.head(self.autoencoder.trunk(x))

    def latents(self, x: np.ndarray) -> np.ndarray:
        return batched(self._embed, x)


@dataclass
class PhaseReporter:
    """Passes metrics and checkpoints on; maps a phase's progress into [start, end]."""

    inner: Reporter
    start: float
    end: float

    def metrics(self, step: int, values: Any) -> None:
        self.inner.metrics(step, values)

    def progress(self, fraction: float, **info: Any) -> None:
        self.inner.progress(self.start + (self.end - self.start) * fraction, **info)

    def checkpoint(self) -> None:
        self.inner.checkpoint()


@dataclass
class Evaluation:
    """What a method reports of its final clustering."""

    clusters: np.ndarray
    scores: dict[str, float]  # the model's evaluation, besides the k-means start's scores
    files: dict[str, Path]
    result: dict[str, Any] = field(default_factory=dict)  # in the job's result only
    calibration: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClusterState:
    """A deep clustering method: its objective, the last assignment and what is known about the
    run; `save`/`load` keep them with each checkpoint."""

    objective: Any
    x: np.ndarray
    truth: np.ndarray | None
    reporter: Reporter
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    info: dict[str, Any] = field(default_factory=dict)
    share: float = 1.0  # of an epoch's rows, trained between two updates

    name: ClassVar[str]  # names the files of its checkpoint state
    phase: ClassVar[str]  # the checkpoint folder of the clustering phase
    energy_units: ClassVar[str]

    @classmethod
    def check(cls, data: clustering.ClusterData) -> None:
        """Fail with `invalid_data` when the method cannot cluster these rows."""

    @classmethod
    def build(cls, autoencoder: AutoencoderObjective, spec: Any, rows: int) -> Any:
        """The method's objective on the autoencoder's latents."""
        raise NotImplementedError

    def training_rows(self) -> np.ndarray:
        """The rows the trainer feeds the objective."""
        return self.x

    def start(self, kmeans: KMeans) -> None:
        """Take the latent k-means as the first clustering (and record it at step 0)."""
        raise NotImplementedError

    def update(self, step: int) -> float:
        """The cluster update; returns the fraction of rows whose cluster changed."""
        raise NotImplementedError

    def evaluate(self, folder: Path) -> Evaluation:
        """Save the model in `folder` and evaluate the final clustering."""
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays saved with each checkpoint, besides the autoencoder and `labels`."""
        raise NotImplementedError

    def restore(self, saved: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        save_autoencoder(self.objective.autoencoder, folder)
        np.savez(folder / f"{self.name}.npz", labels=self.labels, **self.arrays())
        (folder / f"{self.name}.json").write_text(json.dumps(self.info))

    def load(self, folder: Path) -> None:
        load_autoencoder(self.objective.autoencoder, folder)
        with np.load(folder / f"{self.name}.npz", allow_pickle=False) as saved:
            self.restore(saved)
            self.labels = saved["labels"]
        self.info = json.loads((folder / f"{self.name}.json").read_text())


class UpdateEvery(Callback):
    """The method's cluster update every `interval` optimizer steps; training stops once fewer
    than `tol` of the rows changed cluster (the trainer still ends that epoch with a checkpoint,
    which keeps the `converged` flag, so a resumed run does not train on)."""

    def __init__(self, state: ClusterState, interval: int, tol: float) -> None:
        self.state = state
        self.interval = interval
        self.tol = tol

    def on_step(self, trainer: Trainer, step: int) -> None:
        if step % self.interval:
            return
        if self.state.update(step) < self.tol:
            self.state.info["converged"] = True
            raise StopTraining


def epoch_share(update_interval: int, steps_per_epoch: int) -> float:
    """The share of an epoch's rows trained between two updates."""
    return update_interval / steps_per_epoch


def pretrain(
    autoencoder: AutoencoderObjective, x: np.ndarray, spec: Any, reporter: Reporter, folder: Path
) -> bool:
    """Pre-train the autoencoder (resuming from `folder`); True when it resumed."""
    config = spec.training.model_copy(update={"epochs": spec.params.pretrain_epochs})
    trainer = Trainer(autoencoder, config, reporter, metric_prefix="pretrain_")
    resumed = trainer.restore_checkpoint(folder, partial(load_autoencoder, autoencoder))
    save = partial(save_autoencoder, autoencoder)
    trainer.fit(x, None, checkpoint_dir=folder, save_weights=save)
    return resumed


def latent_kmeans(state: ClusterState, params: Any, seed: int) -> KMeans:
    z = state.objective.latents(state.x)
    clustering.check_cluster_count(z, params.n_clusters, "n_clusters (in the latent space)")
    kmeans = KMeans(params.n_clusters, params.latent_dim).fit(z, n_init=params.n_init, seed=seed)
    initial = clustering.scores(state.truth, kmeans.labels)
    state.info.update({f"initial_{name}": value for name, value in initial.items()})
    return kmeans


def train(method: type[ClusterState], spec: Any, reporter: Reporter, context: RunContext) -> Any:
    """Run a deep clustering job: pre-training, latent k-means, training with cluster updates."""
    p, training = spec.params, spec.training
    configure_determinism(training)
    data = clustering.prepare(spec, context, p.n_clusters)
    method.check(data)
    dense = {"latent_dim": p.latent_dim, "hidden": p.hidden, "architecture": "dense"}
    params = AutoencoderParams.model_validate({**dense, "activation": p.activation})
    autoencoder = AutoencoderObjective(params, (data.x.shape[1],))
    folder = context.checkpoint_dir / method.phase
    split = p.pretrain_epochs / (p.pretrain_epochs + training.epochs)  # of the progress
    resumed = False
    if p.pretrain_epochs and not (folder / CHECKPOINT_STATE).exists():
        phase = PhaseReporter(reporter, 0.0, split)
        resumed = pretrain(autoencoder, data.x, spec, phase, context.checkpoint_dir / "pretrain")
    objective = method.build(autoencoder, spec, data.rows)
    trainer = Trainer(objective, training, PhaseReporter(reporter, split, 1.0))
    steps_per_epoch = trainer.steps_per_epoch(data.rows)
    interval = p.steps_between_updates(steps_per_epoch)
    share = epoch_share(interval, steps_per_epoch)
    state = method(objective, data.x, data.labels, reporter, share=share)
    if trainer.restore_checkpoint(folder, state.load):
        resumed = True
    else:
        state.start(latent_kmeans(state, p, training.seed))
    converged = bool(state.info.get("converged"))
    if not converged:
        updates = UpdateEvery(state, interval, p.tol)
        trainer.fit(
            state.training_rows(),
            None,
            checkpoint_dir=folder,
            save_weights=state.save,
            callbacks=[updates],
        )
        converged = bool(state.info.get("converged"))
    reporter.progress(1.0, converged=converged)
    return outcome(state, data, context, resumed, converged, int(trainer.step_var.numpy()))


def outcome(
    state: ClusterState,
    data: clustering.ClusterData,
    context: RunContext,
    resumed: bool,
    converged: bool,
    steps: int,
) -> RunOutcome:
    evaluation = state.evaluate(context.workdir / "model")
    initial = {k: v for k, v in state.info.items() if k.startswith("initial_")}
    model = ModelOutcome(
        files=evaluation.files,
        input_shape=list(data.feature_shape),
        capabilities=["encode", "predict"],
        preprocessing=data.scaler.to_dict(),
        calibration=evaluation.calibration,
        evaluation={**evaluation.scores, **initial},
    )
    result = {
        **evaluation.scores,
        **initial,
        **evaluation.result,
        "converged": converged,
        "changed_fraction": state.info.get("changed_fraction"),
        "steps": steps,
        "cluster_sizes": clustering.sizes(
            evaluation.clusters, int(state.objective.centres.shape[0])
        ),
        "rows": data.rows,
        "resumed": resumed,
        "energy_units": state.energy_units,
    }
    return RunOutcome(result=result, device=device_name(), model=model)


def save_model(autoencoder: AutoencoderObjective, folder: Path, **clusters: Any) -> dict[str, Path]:
    """The encoder and the `clusters` arrays, the files a :class:`DeepServable` loads."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder = folder / "encoder.keras"
    autoencoder.models()["encoder"].save(encoder)
    path = folder / "clusters.npz"
    np.savez(path, **clusters)
    return {"encoder": encoder, "clusters": path}


# --- serving --------------------------------------------------------------------------------


class DeepServable:
    """encode (latents) and predict (the method's `predict`) of a saved deep clustering model."""

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.operations = list(meta.get("capabilities") or ["encode", "predict"])
        self.scaler = Scaler.from_dict(meta.get("preprocessing") or {"scale": "none"})
        self.encoder = keras.models.load_model(files["encoder"], compile=False, safe_mode=True)
        with np.load(files["clusters"], allow_pickle=False) as saved:
            self.centres = tf.constant(saved["centres"], tf.float32)
            self.read(saved)
        spec = [tf.TensorSpec((None, int(np.prod(self.input_shape))), tf.float32)]
        self._encode = tf.function(self.encode, input_signature=spec)
        self._predict = tf.function(lambda x: self.predict(self.encode(x)), input_signature=spec)

    def read(self, saved: Mapping[str, np.ndarray]) -> None:
        """Take the method's arrays of `clusters.npz` besides `centres`."""
        raise NotImplementedError

    def predict(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def encode(self, x: tf.Tensor) -> tf.Tensor:
        return self.encoder(x, training=False)

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation not in self.operations or operation not in ("encode", "predict"):
            raise UnsupportedOperation(operation, self.operations)
        assert inputs is not None
        x = self.scaler.transform(np.asarray(inputs, dtype=np.float32)).reshape(len(inputs), -1)
        x = tf.constant(x.astype(np.float32, copy=False))
        if operation == "encode":
            return {"latents": self._encode(x).numpy()}
        return {name: value.numpy() for name, value in self._predict(x).items()}
