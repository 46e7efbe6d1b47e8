"""Deep clustering network (Yang, Fu, Sidiropoulos & Hong 2017, "Towards K-means-friendly
spaces", arXiv:1610.04794), TensorFlow inside.

1. Pre-train a dense autoencoder (`AutoencoderObjective`) with the shared `Trainer`, as DEC does.
2. k-means in its latent space gives the centroids M and their counts c_k (cluster sizes).
3. Alternate, again through the `Trainer` (so the training telemetry comes with it):
   - network updates on the per-row loss ℓ_i = reconstruction_i + (λ/2) ‖f(x_i) − M s_i‖², with
     the assignment s_i = argmin_k ‖f(x_i) − m_k‖² for the current network and centroids (held
     fixed within a step, so gradients reach only the network);
   - every `update_interval` epochs, the assignment and centroid updates: every row is assigned
     to its nearest centroid, and each centroid takes the paper's count-weighted step
     m_k ← m_k − (1/c_k)(m_k − f(x_i)), c_k ← c_k + 1 for each row assigned to it — applied to
     an epoch's rows at once it is m_k ← (c_k m_k + Σ_i f(x_i)) / (c_k + n_k): a running mean
     whose steps shrink as clusters accumulate rows.

Reconstruction is the autoencoder kinds' mean squared error over features, so λ =
`clustering_weight` weighs a latent squared distance against a per-feature error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.anomaly.autoencoding import AutoencoderObjective
from ml.anomaly.autoencoding import load_weights as load_autoencoder
from ml.anomaly.autoencoding import save_weights as save_autoencoder
from ml.clustering import shared as clustering
from ml.core.preprocessing import Scaler
from ml.core.reporting import ModelOutcome, Reporter, RunContext, RunOutcome
from ml.core.serving import UnsupportedOperation
from ml.deep_clustering import Converged, PhaseReporter
from ml.kmeans import KMeans, squared_distances

STATE_FILE = "dcn.json"
ARRAYS_FILE = "dcn.npz"


def soft_assignment(distances: tf.Tensor, variance: float) -> tf.Tensor:
    """p(k|x) ∝ exp(−‖f(x) − m_k‖² / 2σ²): equal isotropic Gaussians around the centroids, σ²
    the training rows' mean squared distance to their centroid per latent dimension."""
    return tf.nn.softmax(-distances / (2.0 * variance), axis=1)


class DcnObjective:
    """Reconstruction + (λ/2)·(squared latent distance to the nearest centroid), per row."""

    def __init__(self, autoencoder: AutoencoderObjective, n_clusters: int, weight: float) -> None:
        self.autoencoder = autoencoder
        self.weight = float(weight)
        latent = autoencoder.params.latent_dim
        self.centres = tf.Variable(
            tf.zeros((n_clusters, latent)), trainable=False, name="cluster_centres"
        )
        spec = [tf.TensorSpec((None, autoencoder.input_shape[0]), tf.float32)]
        self._embed = tf.function(self.embed, input_signature=spec)
        self._reconstruction = tf.function(self.reconstruction, input_signature=spec)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return self.autoencoder.trainable_variables

    def embed(self, x: tf.Tensor) -> tf.Tensor:
        return self.autoencoder.head(self.autoencoder.trunk(x))

    def reconstruction(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.square(x - self.autoencoder.decoder(self.embed(x))), axis=1)

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        z = self.embed(x)
        reconstruction = tf.reduce_mean(tf.square(x - self.autoencoder.decoder(z)), axis=1)
        distance = tf.reduce_min(squared_distances(z, self.centres), axis=1)
        loss = reconstruction + 0.5 * self.weight * distance
        return loss, {"reconstruction": reconstruction, "clustering": distance}

    def latents(self, x: np.ndarray) -> np.ndarray:
        return _batched(self._embed, x)

    def reconstruction_loss(self, x: np.ndarray) -> float:
        return float(np.mean(_batched(self._reconstruction, x)))


def _batched(fn: Any, x: np.ndarray, size: int = 4096) -> np.ndarray:
    parts = [fn(tf.constant(x[i : i + size])).numpy() for i in range(0, len(x), size)]
    return np.concatenate(parts)


def nearest(z: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid and its squared distance (float64)."""
    z64, c64 = z.astype(np.float64), centres.astype(np.float64)
    d = (z64**2).sum(axis=1)[:, None] - 2.0 * z64 @ c64.T + (c64**2).sum(axis=1)[None, :]
    labels = d.argmin(axis=1)
    return labels, np.maximum(d[np.arange(len(z)), labels], 0.0)


@dataclass
class Clusters:
    """Centroids, their counts and the last assignment (saved with checkpoints)."""

    objective: DcnObjective
    x: np.ndarray
    truth: np.ndarray | None
    reporter: Reporter
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    info: dict[str, Any] = field(default_factory=dict)

    def start(self, kmeans_labels: np.ndarray, centroids: np.ndarray) -> None:
        self.objective.centres.assign(centroids)
        self.counts = np.bincount(kmeans_labels, minlength=len(centroids)).astype(np.float64)
        self.labels = kmeans_labels
        _, distance = nearest(self.objective.latents(self.x), centroids)
        scores = clustering.scores(self.truth, kmeans_labels)
        self.info.update({f"initial_{name}": v for name, v in scores.items()})
        self.reporter.metrics(0, {"kmeans_loss": float(distance.mean()), **scores})

    def update(self, step: int, record: bool = True) -> float:
        """Assign every row, move the centroids (count-weighted); record `kmeans_loss` (mean
        squared latent distance to the assigned centroid, after the move), `changed_fraction`
        and, with class labels, `ari` and `nmi`. Returns the changed fraction."""
        z = self.objective.latents(self.x).astype(np.float64)
        centres = self.objective.centres.numpy().astype(np.float64)
        labels, _ = nearest(z, centres)
        k = len(centres)
        assigned = np.bincount(labels, minlength=k).astype(np.float64)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, z)
        total = self.counts + assigned
        moved = np.where(
            total[:, None] > 0, (self.counts[:, None] * centres + sums) / total[:, None], centres
        )
        self.counts = total
        self.objective.centres.assign(moved.astype(np.float32))
        changed = float(np.mean(labels != self.labels))
        self.labels = labels
        self.info["changed_fraction"] = changed
        if record:
            _, distance = nearest(z, moved)
            scores = clustering.scores(self.truth, labels)
            values = {"kmeans_loss": float(distance.mean()), "changed_fraction": changed}
            self.reporter.metrics(step, {**values, **scores})
        return changed

    def save(self, folder: Path) -> None:
        save_autoencoder(self.objective.autoencoder, folder)
        np.savez(
            folder / ARRAYS_FILE,
            centres=self.objective.centres.numpy(),
            counts=self.counts,
            labels=self.labels,
        )
        (folder / STATE_FILE).write_text(json.dumps(self.info))

    def load(self, folder: Path) -> None:
        load_autoencoder(self.objective.autoencoder, folder)
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as saved:
            self.objective.centres.assign(saved["centres"])
            self.counts = saved["counts"]
            self.labels = saved["labels"]
        self.info = json.loads((folder / STATE_FILE).read_text())


def train_dcn(spec: Any, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.anomaly.autoencoder import AutoencoderParams
    from ml.core.training import CHECKPOINT_STATE, Trainer, configure_determinism, device_name

    p, training = spec.params, spec.training
    configure_determinism(training)
    data = clustering.prepare(spec, context, p.n_clusters)
    x, n = data.x, data.rows
    dense = {"latent_dim": p.latent_dim, "hidden": p.hidden, "architecture": "dense"}
    params = AutoencoderParams.model_validate({**dense, "activation": p.activation})
    autoencoder = AutoencoderObjective(params, (x.shape[1],))
    pretrain_dir = context.checkpoint_dir / "pretrain"
    joint_dir = context.checkpoint_dir / "joint"
    share = p.pretrain_epochs / (p.pretrain_epochs + training.epochs)
    resumed = False
    if p.pretrain_epochs and not (joint_dir / CHECKPOINT_STATE).exists():
        config = training.model_copy(update={"epochs": p.pretrain_epochs})
        phase = PhaseReporter(reporter, 0.0, share)
        pretrainer = Trainer(autoencoder, config, phase, metric_prefix="pretrain_")
        resumed = pretrainer.restore_checkpoint(
            pretrain_dir, lambda folder: load_autoencoder(autoencoder, folder)
        )
        pretrainer.fit(
            x,
            None,
            checkpoint_dir=pretrain_dir,
            save_weights=lambda folder: save_autoencoder(autoencoder, folder),
        )
    objective = DcnObjective(autoencoder, p.n_clusters, p.clustering_weight)
    state = Clusters(objective, x, data.labels, reporter)
    trainer = Trainer(objective, training, PhaseReporter(reporter, share, 1.0))
    if trainer.restore_checkpoint(joint_dir, state.load):
        resumed = True
        if trainer.start_epoch % p.update_interval == 0:  # the update came after the checkpoint
            state.update(0, record=False)
    else:
        z = objective.latents(x)
        clustering.check_cluster_count(z, p.n_clusters, "n_clusters (in the latent space)")
        kmeans = KMeans(p.n_clusters, p.latent_dim).fit(z, n_init=p.n_init, seed=training.seed)
        state.start(kmeans.labels, kmeans.centroids)
    converged = bool(state.info.get("converged"))

    def on_epoch_end(epoch: int, step: int) -> None:
        if epoch % p.update_interval:
            return
        if state.update(step) < p.tol:
            state.info["converged"] = True
            state.save(joint_dir)  # the model files are whole; only the flag is new
            reporter.checkpoint()
            raise Converged

    if not converged:
        try:
            trainer.fit(
                x,
                None,
                checkpoint_dir=joint_dir,
                save_weights=state.save,
                on_epoch_end=on_epoch_end,
            )
        except Converged:
            converged = True
    reporter.progress(1.0, converged=converged)
    z = objective.latents(x)
    centres = objective.centres.numpy()
    clusters, distance = nearest(z, centres)
    variance = max(float(distance.mean()) / p.latent_dim, 1e-12)
    scores = clustering.scores(data.labels, clusters)
    reconstruction = objective.reconstruction_loss(x)
    files = save_model(autoencoder, centres, variance, context.workdir / "model")
    initial = {k: v for k, v in state.info.items() if k.startswith("initial_")}
    evaluation = {
        **scores,
        **initial,
        "kmeans_loss": float(distance.mean()),
        "reconstruction_loss": reconstruction,
    }
    model = ModelOutcome(
        files=files,
        input_shape=list(data.feature_shape),
        capabilities=["encode", "predict"],
        preprocessing=data.scaler.to_dict(),
        calibration={"variance": variance},
        evaluation=evaluation,
    )
    result = {
        **evaluation,
        "converged": converged,
        "changed_fraction": state.info.get("changed_fraction"),
        "steps": int(trainer.step_var.numpy()),
        "cluster_sizes": clustering.sizes(clusters, p.n_clusters),
        "rows": n,
        "resumed": resumed,
        "energy_units": "training loss: mean squared error over features + "
        "(clustering_weight / 2) × squared latent distance to the nearest centroid",
    }
    return RunOutcome(result=result, device=device_name(), model=model)


def save_model(
    autoencoder: AutoencoderObjective, centres: np.ndarray, variance: float, folder: Path
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    encoder = folder / "encoder.keras"
    autoencoder.models()["encoder"].save(encoder)
    path = folder / "clusters.npz"
    np.savez(path, centres=centres.astype(np.float32), variance=np.float64(variance))
    return {"encoder": encoder, "clusters": path}


# --- serving --------------------------------------------------------------------------------


class DcnServable:
    """encode (latents) and predict (clusters, soft probabilities and squared latent distances)."""

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.operations = list(meta.get("capabilities") or ["encode", "predict"])
        self.scaler = Scaler.from_dict(meta.get("preprocessing") or {"scale": "none"})
        self.encoder = keras.models.load_model(files["encoder"], compile=False, safe_mode=True)
        with np.load(files["clusters"], allow_pickle=False) as saved:
            self.centres = tf.constant(saved["centres"], tf.float32)
            self.variance = float(saved["variance"])
        spec = [tf.TensorSpec((None, int(np.prod(self.input_shape))), tf.float32)]
        self._encode = tf.function(self._encode_fn, input_signature=spec)
        self._predict = tf.function(self._predict_fn, input_signature=spec)

    def _encode_fn(self, x: tf.Tensor) -> tf.Tensor:
        return self.encoder(x, training=False)

    def _predict_fn(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        distances = squared_distances(self._encode_fn(x), self.centres)
        return {
            "clusters": tf.argmin(distances, axis=1),
            "probabilities": soft_assignment(distances, self.variance),
            "distances": distances,
        }

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation not in self.operations or operation not in ("encode", "predict"):
            raise UnsupportedOperation(operation, self.operations)
        assert inputs is not None
        x = self.scaler.transform(np.asarray(inputs, dtype=np.float32)).reshape(len(inputs), -1)
        x = tf.constant(x.astype(np.float32, copy=False))
        if operation == "encode":
            return {"latents": self._encode(x).numpy()}
        return {name: value.numpy() for name, value in self._predict(x).items()}
