"""Parametric t-SNE (van der Maaten 2009), TensorFlow inside: a dense network f trained so that
its embedding y = f(x) keeps t-SNE's neighbourhood structure, so that new rows can be encoded.

For each batch of m rows (the whole training set when it fits in one batch):

- P: Gaussian affinities p_{j|i} ∝ exp(−β_i ‖x_i − x_j‖²), β_i found by bisection so that the
  perplexity 2^{H(p_{·|i})} equals `perplexity` (capped at m − 1), symmetrised to
  p_ij = (p_{j|i} + p_{i|j}) / 2m;
- Q: Student-t with one degree of freedom, q_ij ∝ (1 + ‖y_i − y_j‖²)^−1 over pairs i ≠ j;
- loss: KL(αP ‖ Q) = Σ_ij αp_ij ln(αp_ij / q_ij), with α = `early_exaggeration` for the first
  `exaggeration_epochs` epochs and 1 after, written as per-row terms whose batch mean is the KL.

Training runs through the shared `Trainer` (with its telemetry; the job is `ml.reduction.tsne`).
The t-SNE loss couples the rows of a batch, so the telemetry's micro-batches are smaller t-SNE
batches with their own P and Q.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.core.networks import Stack, as_model, encoder_trunk
from ml.core.serving import DrawsOnePicture, ScaledServable, png
from ml.core.training import Callback
from ml.reduction import shared as reduction

BISECTION_STEPS = 24
# ln β is searched in ±LOG_BETA_RANGE, on distances divided by each row's mean distance.
LOG_BETA_RANGE = 12.0
PICTURE_ROWS = 5000
ENCODER_FILE = "encoder.keras"
EMBEDDING_FILE = "embedding.npz"


def squared_distances(x: tf.Tensor) -> tf.Tensor:
    norms = tf.reduce_sum(tf.square(x), axis=1)
    d = norms[:, None] - 2.0 * tf.matmul(x, x, transpose_b=True) + norms[None, :]
    return tf.maximum(d, 0.0)


def joint_probabilities(x: tf.Tensor, perplexity: float) -> tf.Tensor:
    """Symmetric P [m, m] of the rows of x (zero diagonal, summing to 1)."""
    m = tf.shape(x)[0]
    off = 1.0 - tf.eye(m, dtype=x.dtype)
    d = squared_distances(x)
    # Shift each row by its nearest neighbour's distance and divide by its mean distance: the
    # same β range then suits any scale, and exp never underflows for the nearest neighbour.
    nearest = tf.reduce_min(d + 1e30 * (1.0 - off), axis=1, keepdims=True)
    shifted = tf.maximum(d - nearest, 0.0) * off
    others = tf.cast(tf.maximum(m - 1, 1), x.dtype)
    spread = tf.reduce_sum(shifted, axis=1, keepdims=True) / others
    scaled = shifted / tf.maximum(spread, 1e-12)
    target = tf.math.log(tf.minimum(tf.cast(perplexity, x.dtype), others))

    def conditional(log_beta: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        beta = tf.exp(log_beta)
        w = tf.exp(-beta * scaled) * off
        total = tf.reduce_sum(w, axis=1, keepdims=True)
        mean_distance = tf.reduce_sum(w * scaled, axis=1, keepdims=True) / total
        entropy = tf.math.log(total) + beta * mean_distance
        return entropy, w / total

    def bisect(i: tf.Tensor, low: tf.Tensor, high: tf.Tensor) -> tuple:
        middle = 0.5 * (low + high)
        too_flat = conditional(middle)[0] > target  # entropy falls as β grows
        return i + 1, tf.where(too_flat, middle, low), tf.where(too_flat, high, middle)

    low = tf.fill([m, 1], tf.constant(-LOG_BETA_RANGE, x.dtype))
    high = tf.fill([m, 1], tf.constant(LOG_BETA_RANGE, x.dtype))
    _, low, high = tf.while_loop(
        lambda i, *_: i < BISECTION_STEPS, bisect, (tf.constant(0), low, high)
    )
    p = conditional(0.5 * (low + high))[1]
    return (p + tf.transpose(p)) / (2.0 * tf.cast(m, x.dtype))


def log_student_q(y: tf.Tensor) -> tf.Tensor:
    """ln q_ij of the Student-t kernel over pairs i ≠ j (the diagonal is not used)."""
    m = tf.shape(y)[0]
    d = squared_distances(y)
    kernel = (1.0 - tf.eye(m, dtype=y.dtype)) / (1.0 + d)
    return -tf.math.log1p(d) - tf.math.log(tf.reduce_sum(kernel))


def kl_rows(p: tf.Tensor, log_q: tf.Tensor) -> tf.Tensor:
    """Per-row terms m · Σ_j p_ij ln(p_ij / q_ij): their mean over the m rows is KL(P‖Q)."""
    m = tf.cast(tf.shape(p)[0], p.dtype)
    return m * tf.reduce_sum(tf.math.xlogy(p, p) - p * log_q, axis=1)


class TsneObjective:
    """KL(αP‖Q) of a batch, as per-row terms; extras: the plain KL (α = 1) and α."""

    def __init__(self, params: Any, features: int) -> None:
        self.params = params
        self.features = features
        self.trunk = encoder_trunk((features,), params.hidden, params.activation, False)
        self.head = keras.layers.Dense(params.n_components, name="embedding")
        self.head(self.trunk(tf.zeros((1, features))))
        self.exaggeration = tf.Variable(1.0, trainable=False, name="exaggeration")
        spec = [tf.TensorSpec((None, features), tf.float32)]
        self._embed = tf.function(self.embed, input_signature=spec)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return [*self.trunk.trainable_variables, *self.head.trainable_variables]

    def embed(self, x: tf.Tensor) -> tf.Tensor:
        return self.head(self.trunk(x))

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        p = tf.stop_gradient(joint_probabilities(x, self.params.perplexity))
        log_q = log_student_q(self.embed(x))
        plain = kl_rows(p, log_q)
        if not training:
            return plain, {"kl_divergence": plain, "exaggeration": tf.ones_like(plain)}
        alpha = self.exaggeration
        loss = kl_rows(alpha * p, log_q)
        return loss, {"kl_divergence": plain, "exaggeration": alpha * tf.ones_like(plain)}

    def embedding(self, x: np.ndarray) -> np.ndarray:
        parts = [self._embed(tf.constant(x[i : i + 4096])).numpy() for i in range(0, len(x), 4096)]
        return np.concatenate(parts) if parts else np.zeros((0, self.params.n_components))

    def model(self) -> keras.Model:
        return as_model(Stack([*self.trunk.layers, self.head]), (self.features,), "encoder")

    def save_weights(self, folder: Path) -> None:
        self.model().save_weights(folder / "encoder.weights.h5")

    def load_weights(self, folder: Path) -> None:
        self.model().load_weights(folder / "encoder.weights.h5")


class EarlyExaggeration(Callback):
    """t-SNE's early exaggeration: P scaled by `early_exaggeration` for the first
    `exaggeration_epochs` epochs, then 1; set again at each epoch's end."""

    def __init__(self, objective: TsneObjective, params: Any) -> None:
        self.objective, self.params = objective, params

    def set(self, epochs_done: int) -> None:
        early = epochs_done < self.params.exaggeration_epochs
        self.objective.exaggeration.assign(self.params.early_exaggeration if early else 1.0)

    def on_epoch_end(self, trainer: Any, epoch: int, step: int, logs: dict[str, float]) -> None:
        self.set(epoch)


def save_model(
    objective: TsneObjective,
    embedded: np.ndarray,
    rows: reduction.Rows,
    train: np.ndarray,
    folder: Path,
    seed: int,
) -> dict[str, Path]:
    """The encoder, and the training embedding (up to PICTURE_ROWS rows) with what colours it."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder = folder / ENCODER_FILE
    objective.model().save(encoder)
    shown = reduction.subsample(len(embedded), PICTURE_ROWS, seed)
    arrays: dict[str, Any] = {"embedding": embedded[shown]}
    if rows.colour is not None:
        arrays["colour"] = rows.colour[train][shown]
        arrays["colour_type"] = np.str_(rows.colour_type or "class")
    path = folder / EMBEDDING_FILE
    np.savez(path, **arrays)
    return {"encoder": encoder, "embedding": path}


# --- serving --------------------------------------------------------------------------------


def _dots(ax: Any, coords: list[np.ndarray], **style: Any) -> Any:
    if len(coords) == 3:
        return ax.scatter(coords[0], coords[1], coords[2], **style)
    return ax.scatter(coords[0], coords[1], **style)


def draw_embedding(
    embedding: np.ndarray, colour: np.ndarray | None, colour_type: str | None
) -> bytes:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 5.5))
    three = embedding.shape[1] >= 3
    ax = figure.add_subplot(projection="3d" if three else None)
    coords = [embedding[:, j] for j in range(3 if three else 2)]
    size = 4 if len(embedding) > 2000 else 8
    if colour is None:
        _dots(ax, coords, s=size, c="tab:blue")
    elif colour_type == "class" and len(np.unique(colour)) <= 20:
        for value in np.unique(colour):
            keep = colour == value
            _dots(ax, [c[keep] for c in coords], s=size, label=f"{value:g}")
        ax.legend(loc="best", markerscale=2, fontsize=7, title="label")
    else:
        points = _dots(ax, coords, s=size, c=colour, cmap="viridis")
        figure.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"training embedding ({len(embedding)} rows)")
    return png(figure)


class TsneServable(ScaledServable, DrawsOnePicture):
    """encode (the network's embedding of new rows) and the `embedding` picture."""

    serves = ("encode",)
    drawing = "embedding"

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        super().__init__(meta)
        self.encoder = keras.models.load_model(files["encoder"], compile=False, safe_mode=True)
        spec = [tf.TensorSpec((None, int(math.prod(self.input_shape))), tf.float32)]
        self._encode = tf.function(self._encode_fn, input_signature=spec)
        self.files = files

    def _encode_fn(self, x: tf.Tensor) -> tf.Tensor:
        return self.encoder(x, training=False)

    def run(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        x = self.scaled(operation, inputs, np.float32)
        return {"latents": self._encode(tf.constant(x.astype(np.float32, copy=False))).numpy()}

    def draw(self) -> bytes:
        with np.load(self.files["embedding"], allow_pickle=False) as saved:
            colour = saved["colour"] if "colour" in saved.files else None
            kind = str(saved["colour_type"]) if "colour_type" in saved.files else None
            return draw_embedding(saved["embedding"], colour, kind)
