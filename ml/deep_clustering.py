"""Deep embedded clustering (Xie, Girshick & Farhadi 2016, arXiv:1511.06335), TensorFlow inside.

1. Pre-train a dense autoencoder (`AutoencoderObjective`) with the shared `Trainer`.
2. k-means in its latent space gives the initial cluster centres μ_j.
3. Refine encoder and centres together, again through the `Trainer` (so the training telemetry
   comes with it), minimising KL(P‖Q) per row: q_ij ∝ (1 + ‖z_i − μ_j‖²/α)^{−(α+1)/2} (Student-t)
   and the sharpened target p_ij ∝ q_ij² / Σ_i q_ij, recomputed from the whole data set every
   `update_interval` epochs and held fixed between updates. Refinement stops early when fewer
   than `tol` of the rows changed cluster between two target updates.

Rows reach the objective with their index appended as a last column, so that each row's
target is looked up in a (non-trainable) variable that a target update simply reassigns.
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
from ml.core.reporting import JobFailed, ModelOutcome, Reporter, RunContext, RunOutcome
from ml.core.serving import UnsupportedOperation
from ml.kmeans import KMeans, squared_distances

# Row indices travel as float32: exact below 2**24.
MAX_ROWS = 2**24
STATE_FILE = "dec.json"
ARRAYS_FILE = "dec.npz"


def log_soft_assignment(z: tf.Tensor, centres: tf.Tensor, alpha: float) -> tf.Tensor:
    """ln q_ij of the Student-t kernel with `alpha` degrees of freedom, normalised over j."""
    d = squared_distances(z, centres)
    return tf.nn.log_softmax(-0.5 * (alpha + 1.0) * tf.math.log1p(d / alpha), axis=1)


def target_distribution(q: np.ndarray) -> np.ndarray:
    """p_ij = (q_ij² / f_j) / Σ_j' (q_ij'² / f_j'), f_j = Σ_i q_ij: sharper, and frequent
    clusters are penalised so that no cluster swallows the others."""
    weight = q**2 / np.maximum(q.sum(axis=0), 1e-12)
    return weight / weight.sum(axis=1, keepdims=True)


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    safe = np.maximum(q, 1e-30)
    return np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-30)) - np.log(safe)), 0.0), axis=1)


class DecObjective:
    """KL(p_i ‖ q_i) per row; the encoder of `autoencoder` and the centres are trained."""

    def __init__(self, autoencoder: AutoencoderObjective, n_clusters: int, alpha: float, rows: int):
        self.autoencoder = autoencoder
        self.alpha = float(alpha)
        latent = autoencoder.params.latent_dim
        self.centres = tf.Variable(tf.zeros((n_clusters, latent)), name="cluster_centres")
        self.targets = tf.Variable(tf.zeros((rows, n_clusters)), trainable=False, name="targets")
        spec = [tf.TensorSpec((None, autoencoder.input_shape[0]), tf.float32)]
        self._embed = tf.function(self.embed, input_signature=spec)
        self._q = tf.function(lambda x: tf.exp(self.log_q(x)), input_signature=spec)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        ae = self.autoencoder
        return [*ae.trunk.trainable_variables, *ae.head.trainable_variables, self.centres]

    def embed(self, x: tf.Tensor) -> tf.Tensor:
        return self.autoencoder.head(self.autoencoder.trunk(x))

    def log_q(self, x: tf.Tensor) -> tf.Tensor:
        return log_soft_assignment(self.embed(x), self.centres, self.alpha)

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        features, index = x[:, :-1], tf.cast(x[:, -1], tf.int32)
        p = tf.gather(self.targets, index)
        kl = tf.reduce_sum(tf.math.xlogy(p, p) - p * self.log_q(features), axis=1)
        return kl, {}

    def latents(self, x: np.ndarray) -> np.ndarray:
        return _batched(self._embed, x)

    def soft_assignments(self, x: np.ndarray) -> np.ndarray:
        return _batched(self._q, x).astype(np.float64)


def _batched(fn: Any, x: np.ndarray, size: int = 4096) -> np.ndarray:
    parts = [fn(tf.constant(x[i : i + size])).numpy() for i in range(0, len(x), size)]
    return np.concatenate(parts)


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


class Converged(Exception):
    """Fewer than `tol` of the rows changed cluster between two target updates."""


@dataclass
class Refinement:
    """Targets, assignments and what is known about the run so far (saved with checkpoints)."""

    objective: DecObjective
    x: np.ndarray
    truth: np.ndarray | None
    reporter: Reporter
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    info: dict[str, Any] = field(default_factory=dict)

    def update_targets(self, step: int, record: bool = True) -> float:
        """Recompute P from Q on every row; record `kl_loss` = mean KL(P‖Q) with the new P and
        `changed_fraction` (rows whose cluster changed since the last update)."""
        q = self.objective.soft_assignments(self.x)
        p = target_distribution(q)
        labels = q.argmax(axis=1)
        changed = float(np.mean(labels != self.labels)) if len(self.labels) else 1.0
        self.objective.targets.assign(p.astype(np.float32))
        self.labels = labels
        self.info["changed_fraction"] = changed
        if record:
            scores = clustering.scores(self.truth, labels)
            values = {"kl_loss": float(kl_rows(p, q).mean()), "changed_fraction": changed}
            self.reporter.metrics(step, {**values, **scores})
        return changed

    def save(self, folder: Path) -> None:
        save_autoencoder(self.objective.autoencoder, folder)
        np.savez(
            folder / ARRAYS_FILE,
            centres=self.objective.centres.numpy(),
            targets=self.objective.targets.numpy(),
            labels=self.labels,
        )
        (folder / STATE_FILE).write_text(json.dumps(self.info))

    def load(self, folder: Path) -> None:
        load_autoencoder(self.objective.autoencoder, folder)
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as saved:
            self.objective.centres.assign(saved["centres"])
            self.objective.targets.assign(saved["targets"])
            self.labels = saved["labels"]
        self.info = json.loads((folder / STATE_FILE).read_text())


def train_dec(spec: Any, reporter: Reporter, context: RunContext) -> RunOutcome:
    from ml.anomaly.autoencoder import AutoencoderParams
    from ml.core.training import CHECKPOINT_STATE, Trainer, configure_determinism, device_name

    p, training = spec.params, spec.training
    configure_determinism(training)
    data = clustering.prepare(spec, context, p.n_clusters)
    x, n = data.x, data.rows
    if n >= MAX_ROWS:
        raise JobFailed("invalid_data", f"dec clusters at most {MAX_ROWS - 1} rows; got {n}")
    dense = {"latent_dim": p.latent_dim, "hidden": p.hidden, "architecture": "dense"}
    params = AutoencoderParams.model_validate({**dense, "activation": p.activation})
    autoencoder = AutoencoderObjective(params, (x.shape[1],))
    pretrain_dir = context.checkpoint_dir / "pretrain"
    refine_dir = context.checkpoint_dir / "refine"
    share = p.pretrain_epochs / (p.pretrain_epochs + training.epochs)
    resumed = False
    if p.pretrain_epochs and not (refine_dir / CHECKPOINT_STATE).exists():
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
    objective = DecObjective(autoencoder, p.n_clusters, p.alpha, n)
    refinement = Refinement(objective, x, data.labels, reporter)
    trainer = Trainer(objective, training, PhaseReporter(reporter, share, 1.0))
    if trainer.restore_checkpoint(refine_dir, refinement.load):
        resumed = True
        if trainer.start_epoch % p.update_interval == 0:  # the update came after the checkpoint
            refinement.update_targets(0, record=False)
    else:
        z = objective.latents(x)
        clustering.check_cluster_count(z, p.n_clusters, "n_clusters (in the latent space)")
        kmeans = KMeans(p.n_clusters, p.latent_dim).fit(z, n_init=p.n_init, seed=training.seed)
        objective.centres.assign(kmeans.centroids)
        refinement.labels = kmeans.labels
        initial = clustering.scores(data.labels, kmeans.labels)
        refinement.info.update({f"initial_{k}": v for k, v in initial.items()})
        refinement.info["latent_kmeans_inertia"] = kmeans.inertia
        refinement.update_targets(0)
    converged = bool(refinement.info.get("converged"))

    def on_epoch_end(epoch: int, step: int) -> None:
        if epoch % p.update_interval:
            return
        if refinement.update_targets(step) < p.tol:
            refinement.info["converged"] = True
            refinement.save(refine_dir)  # the model files are whole; only the flag is new
            reporter.checkpoint()
            raise Converged

    indexed = np.concatenate([x, np.arange(n, dtype=np.float32)[:, None]], axis=1)
    if not converged:
        try:
            trainer.fit(
                indexed,
                None,
                checkpoint_dir=refine_dir,
                save_weights=refinement.save,
                on_epoch_end=on_epoch_end,
            )
        except Converged:
            converged = True
    reporter.progress(1.0, converged=converged)
    q = objective.soft_assignments(x)
    clusters = q.argmax(axis=1)
    scores = clustering.scores(data.labels, clusters)
    final_loss = float(kl_rows(objective.targets.numpy().astype(np.float64), q).mean())
    files = save_model(autoencoder, objective, context.workdir / "model")
    initial = {k: v for k, v in refinement.info.items() if k.startswith("initial_")}
    model = ModelOutcome(
        files=files,
        input_shape=list(data.feature_shape),
        capabilities=["encode", "predict"],
        preprocessing=data.scaler.to_dict(),
        evaluation={**scores, **initial},
    )
    result = {
        **scores,
        **initial,
        "kl_loss": final_loss,
        "converged": converged,
        "changed_fraction": refinement.info.get("changed_fraction"),
        "steps": int(trainer.step_var.numpy()),
        "latent_kmeans_inertia": refinement.info.get("latent_kmeans_inertia"),
        "cluster_sizes": clustering.sizes(clusters, p.n_clusters),
        "rows": n,
        "resumed": resumed,
        "energy_units": "training loss: KL(P‖Q) in nats per row (pretraining: mean squared error)",
    }
    return RunOutcome(result=result, device=device_name(), model=model)


def save_model(
    autoencoder: AutoencoderObjective, objective: DecObjective, folder: Path
) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    encoder = folder / "encoder.keras"
    autoencoder.models()["encoder"].save(encoder)
    centres = folder / "clusters.npz"
    np.savez(centres, centres=objective.centres.numpy(), alpha=np.float64(objective.alpha))
    return {"encoder": encoder, "clusters": centres}


# --- serving --------------------------------------------------------------------------------


class DecServable:
    """encode (latents) and predict (clusters and the soft assignment q) of a saved DEC model."""

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        self.input_shape = tuple(int(s) for s in meta["input_shape"])
        self.operations = list(meta.get("capabilities") or ["encode", "predict"])
        self.scaler = Scaler.from_dict(meta.get("preprocessing") or {"scale": "none"})
        self.encoder = keras.models.load_model(files["encoder"], compile=False, safe_mode=True)
        with np.load(files["clusters"], allow_pickle=False) as saved:
            self.centres = tf.constant(saved["centres"], tf.float32)
            self.alpha = float(saved["alpha"])
        spec = [tf.TensorSpec((None, int(np.prod(self.input_shape))), tf.float32)]
        self._encode = tf.function(self._encode_fn, input_signature=spec)
        self._predict = tf.function(self._predict_fn, input_signature=spec)

    def _encode_fn(self, x: tf.Tensor) -> tf.Tensor:
        return self.encoder(x, training=False)

    def _predict_fn(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        q = tf.exp(log_soft_assignment(self._encode_fn(x), self.centres, self.alpha))
        return {"clusters": tf.argmax(q, axis=1), "probabilities": q}

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation not in self.operations or operation not in ("encode", "predict"):
            raise UnsupportedOperation(operation, self.operations)
        assert inputs is not None
        x = self.scaler.transform(np.asarray(inputs, dtype=np.float32)).reshape(len(inputs), -1)
        x = tf.constant(x.astype(np.float32, copy=False))
        if operation == "encode":
            return {"latents": self._encode(x).numpy()}
        return {name: value.numpy() for name, value in self._predict(x).items()}
