"""Diffusion models in TensorFlow: the ε-network, its training objective (L_simple) through the
shared Trainer with EMA weights, the per-epoch bound, and the serving side.

The chain's maths live in `ml.generative.diffusion_maths` (NumPy); this module adds only what
needs a network.
Imported inside the `diffusion` kind's `run` and `load`, never at start-up.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml.anomaly.drift import keep_reference
from ml.core.reporting import JobFailed, Reporter, RunContext, RunOutcome
from ml.core.serving import calibrated_threshold, score_answer
from ml.core.training import Callback, FitResult, Trainer, configure_determinism, device_name
from ml.generative import shared as generative
from ml.generative.diffusion_maths import GaussianDiffusion
from ml.generative.diffusion_networks import build_eps_network, time_embedding

MODEL_FILE = "eps_model.keras"
VARIANCE_FLOOR = 1e-6  # per-dimension data variance floor for the entropy production
SAMPLE_CHUNK = 4096
EPS_CHUNK = 8192  # rows per network call
SCORE_SEED = 12345
BOUND_SEED = 54321


# --- training ----------------------------------------------------------------------------------


class DiffusionObjective:
    """L_simple per example: ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖² (summed over dimensions),
    t ~ U{1..T}, with t and ε drawn from the trainer's stateless seed."""

    def __init__(self, params: Any, input_shape: tuple[int, ...], chain: GaussianDiffusion):
        self.params = params
        self.input_shape = input_shape
        self.T = chain.T
        self.net = build_eps_network(params, input_shape)
        self.ema = keras.models.clone_model(self.net)
        self.ema.set_weights(self.net.get_weights())
        self.sqrt_ab = tf.constant(np.sqrt(chain.alpha_bar), tf.float32)
        self.sqrt_1m_ab = tf.constant(np.sqrt(1.0 - chain.alpha_bar), tf.float32)

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return list(self.net.trainable_variables)

    def eps(self, net: keras.Model, x: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        return net([x, time_embedding(t, self.params.time_embedding, self.T)], training=False)

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        n = tf.shape(x)[0]
        t = tf.random.stateless_uniform([n], seed, minval=1, maxval=self.T + 1, dtype=tf.int32)
        noise_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        eps = tf.random.stateless_normal(tf.shape(x), noise_seed, dtype=x.dtype)
        shape = tf.concat([[n], tf.ones([len(x.shape) - 1], tf.int32)], axis=0)
        a = tf.reshape(tf.gather(self.sqrt_ab, t), shape)
        b = tf.reshape(tf.gather(self.sqrt_1m_ab, t), shape)
        err = tf.square(eps - self.eps(self.net, a * x + b * eps, t))
        loss = tf.reduce_sum(tf.reshape(err, [n, -1]), axis=1)
        return loss, {"loss_simple": loss}

    def save_weights(self, folder: Path) -> None:
        self.net.save_weights(folder / "eps.weights.h5")
        self.ema.save_weights(folder / "eps_ema.weights.h5")

    def load_weights(self, folder: Path) -> None:
        self.net.load_weights(folder / "eps.weights.h5")
        self.ema.load_weights(folder / "eps_ema.weights.h5")


class EmaTrainer(Trainer):
    """The shared Trainer plus an exponential moving average of the weights after each update
    (decay min(d, (1 + n)/(10 + n)) after n updates, so a short run is not stuck at its start)."""

    def __init__(self, objective: DiffusionObjective, *args: Any, decay: float, **kw: Any):
        super().__init__(objective, *args, **kw)
        self.decay = decay
        self.pairs = list(zip(objective.ema.trainable_variables, self.variables, strict=True))

    def _apply(self, grads: list[tf.Tensor]) -> None:
        super()._apply(grads)
        n = tf.cast(self.step_var, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        for average, variable in self.pairs:
            average.assign(decay * average + (1.0 - decay) * variable)


class EpsFunction:
    """ε̂(x_t, t) of a network on NumPy arrays, compiled once with a fixed signature."""

    def __init__(self, net: keras.Model, input_shape: tuple[int, ...], emb_dim: int, T: int):
        def call(x: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
            return net([x, time_embedding(t, emb_dim, T)], training=False)

        signature = [
            tf.TensorSpec((None, *input_shape), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ]
        self._call = tf.function(call, input_signature=signature)

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        parts = [
            self._call(
                tf.constant(x[i : i + EPS_CHUNK], tf.float32),
                tf.constant(t[i : i + EPS_CHUNK], tf.int32),
            ).numpy()
            for i in range(0, len(x), EPS_CHUNK)
        ]
        return np.concatenate(parts).astype(np.float64)


def sample(
    chain: GaussianDiffusion,
    eps_fn: EpsFunction,
    input_shape: tuple[int, ...],
    n: int,
    rng: np.random.Generator,
    sampler: str = "ddpm",
    steps: int | None = None,
) -> np.ndarray:
    chain.check_sampling(sampler, steps)
    parts = [
        chain.sample(eps_fn, (min(SAMPLE_CHUNK, n - i), *input_shape), rng, sampler, steps)
        for i in range(0, n, SAMPLE_CHUNK)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, *input_shape))


def bound_nats(
    chain: GaussianDiffusion,
    eps_fn: EpsFunction,
    x: np.ndarray,
    strata: int,
    *,
    seed: int,
    shared_noise: bool,
) -> np.ndarray:
    """Per-row bound (nats, scaled units), in blocks of rows."""
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(0, len(x), 256):
        block = x[i : i + 256]
        if shared_noise:  # the same draws for every block too
            rng = np.random.default_rng(seed)
        parts.append(chain.bound(block, eps_fn, rng, strata, shared_noise)["total"])
    return np.concatenate(parts) if parts else np.zeros(0)


def chain_of(params: Any) -> GaussianDiffusion:
    return GaussianDiffusion.named(
        params.schedule, params.timesteps, params.beta_start, params.beta_end
    )


class BoundMetrics(Callback):
    """At each epoch's end, the bound on held-out rows through the EMA network: the
    `nll_bound_nats` and `nll_bound_bits_per_dim` points (data units)."""

    def __init__(
        self,
        chain: GaussianDiffusion,
        eps_fn: EpsFunction,
        rows: np.ndarray,
        strata: int,
        log_jacobian: float,
        reporter: Reporter,
    ) -> None:
        self.chain, self.eps_fn, self.rows, self.strata = chain, eps_fn, rows, strata
        self.log_jacobian, self.reporter = log_jacobian, reporter
        self.dims = int(np.prod(rows.shape[1:]))

    def on_epoch_end(self, trainer: Trainer, epoch: int, step: int, logs: dict[str, float]) -> None:
        nats = bound_nats(
            self.chain, self.eps_fn, self.rows, self.strata, seed=BOUND_SEED, shared_noise=False
        )
        mean = float(nats.mean()) + self.log_jacobian
        bits = mean / (self.dims * math.log(2))
        self.reporter.metrics(step, {"nll_bound_bits_per_dim": bits, "nll_bound_nats": mean})


def forward_entropy_production(
    data: generative.GenerativeData, chain: GaussianDiffusion, reporter: Reporter
) -> np.ndarray:
    """The forward chain's entropy production for the data's moments (per dimension, scaled
    units), reported as a metric series over t = 1..T."""
    flat = data.train.reshape(len(data.train), -1).astype(np.float64)
    variance = np.maximum(flat.var(axis=0), VARIANCE_FLOOR)
    sigma = chain.entropy_production(flat.mean(axis=0), variance)
    for t, value in enumerate(sigma, start=1):
        reporter.metrics(t, {"forward_entropy_production": float(value)})
    return sigma


def model_entropy_lower_bound(
    chain: GaussianDiffusion, held: np.ndarray, bound: np.ndarray
) -> float:
    """A model-based lower bound on the chain's whole entropy production (scaled units), from
    the bound per held-out row (nats, scaled units).

    Σσ_t = KL(q_0‖π) − KL(q_T‖π) ≥ E[−ln π(x_0)] − E[bound] − E[L_T], since the bound is at
    least the data's entropy and KL(q_T‖π) ≤ E[L_T]. Unlike the Gaussian closed form it sees
    the data's shape (its manifold), not only the first two moments."""
    flat = held.reshape(len(held), -1).astype(np.float64)
    prior_nll = 0.5 * (flat**2).sum(axis=1) + 0.5 * flat.shape[1] * math.log(2 * math.pi)
    return float(prior_nll.mean() - bound.mean() - chain.prior_term(flat).mean())


def calibration_of(params: Any, cut: float, rows: int, log_jacobian: float) -> dict[str, Any]:
    """What serving needs to rebuild the chain and score rows against the threshold."""
    return {
        "threshold": cut,
        "contamination": params.contamination,
        "target_fpr": params.target_fpr,
        "calibration_rows": rows,
        "score": "nll_bound_nats (variational bound on −ln p(x), data units)",
        "schedule": params.schedule,
        "timesteps": params.timesteps,
        "beta_start": params.beta_start,
        "beta_end": params.beta_end,
        "time_embedding": params.time_embedding,
        "bound_timesteps": params.bound_timesteps,
        "log_jacobian": log_jacobian,
    }


def build_objective(
    params: Any, shape: tuple[int, ...], chain: GaussianDiffusion
) -> DiffusionObjective:
    try:
        return DiffusionObjective(params, shape, chain)
    except ValueError as exc:
        raise JobFailed("invalid_data", str(exc)) from exc


def fit_diffusion(
    spec: Any,
    reporter: Reporter,
    context: RunContext,
    data: generative.GenerativeData,
    objective: DiffusionObjective,
    bound: BoundMetrics,
) -> tuple[FitResult, bool]:
    """Train the ε-network with EMA weights, resuming from the job's checkpoint."""
    trainer = EmaTrainer(
        objective,
        spec.training,
        reporter,
        decay=spec.params.ema_decay,
        extra_metrics=lambda extras: {"loss_simple": extras.get("loss_simple", math.nan)},
    )
    resumed = trainer.restore_checkpoint(context.checkpoint_dir, objective.load_weights)
    fit = trainer.fit(
        data.train,
        data.validation if len(data.validation) else None,
        checkpoint_dir=context.checkpoint_dir,
        save_weights=objective.save_weights,
        callbacks=[bound],
    )
    return fit, resumed


def train_diffusion(
    spec: Any, reporter: Reporter, context: RunContext, capabilities: list[str]
) -> RunOutcome:
    from ml.anomaly.scoring import threshold

    params, training = spec.params, spec.training
    configure_determinism(training)
    data = generative.prepare(spec, context, params.evaluation_split)
    shape, chain = data.input_shape, chain_of(params)
    objective = build_objective(params, shape, chain)
    log_jacobian = data.scaler.log_abs_det_jacobian()
    sigma = forward_entropy_production(data, chain, reporter)  # also stored with the model
    ema_fn = EpsFunction(objective.ema, shape, params.time_embedding, chain.T)
    held = data.validation if len(data.validation) else data.train
    fit, resumed = fit_diffusion(
        spec,
        reporter,
        context,
        data,
        objective,
        BoundMetrics(
            chain, ema_fn, held[: params.bound_rows], params.bound_timesteps, log_jacobian, reporter
        ),
    )

    # Calibration: the bound per row on held-out rows, with the draws serving will use.
    bound = bound_nats(
        chain, ema_fn, held, params.bound_timesteps, seed=SCORE_SEED, shared_noise=True
    )
    scores = bound + log_jacobian
    cut = threshold(scores, params.contamination, params.target_fpr)
    rng = np.random.default_rng([training.seed, 2])
    generated = data.scaler.inverse_transform(
        sample(chain, ema_fn, shape, len(data.held_out_b), rng).astype(np.float32)
    )
    quality = generative.sample_quality(data, generated, training.seed)
    bound_bits = float(scores.mean()) / (int(np.prod(shape)) * math.log(2))
    evaluation = {
        **quality,
        "nll_bound_bits_per_dim": bound_bits,
        "entropy_production_total": float(sigma.sum()),
        "entropy_production_per_step": [float(s) for s in sigma],
        "entropy_production_gaussian": "per dimension (diagonal), scaled units",
        "entropy_production_model_lower_bound": model_entropy_lower_bound(chain, held, bound),
    }
    model = generative.model_outcome(
        data,
        context,
        ("eps_model", MODEL_FILE, objective.ema),
        capabilities=capabilities,
        calibration=calibration_of(params, cut, len(held), log_jacobian),
        evaluation=evaluation,
    )
    keep_reference(model, data.train, training.seed, context.workdir / "model")
    result = {
        **fit.summary(resumed=resumed),
        "threshold": cut,
        "nll_bound_bits_per_dim": bound_bits,
        "entropy_production_total": float(sigma.sum()),
        "energy_units": "training loss: L_simple, ‖ε − ε_θ‖² summed over dimensions",
        **generative.result_quality(quality),
    }
    return RunOutcome(result=result, device=device_name(), model=model)


# --- serving -----------------------------------------------------------------------------------


class DiffusionServable(generative.GenerativeServable):
    """generate (ddpm | ddim, any number of steps up to T) and score (the bound per row)."""

    title = "diffusion samples"

    def __init__(self, files: dict[str, Path], meta: dict[str, Any]) -> None:
        super().__init__(files, meta)
        cal = self.calibration
        self.chain = GaussianDiffusion.named(
            cal["schedule"], int(cal["timesteps"]), cal["beta_start"], cal["beta_end"]
        )
        self.threshold = calibrated_threshold(meta)
        self.strata = int(cal.get("bound_timesteps", 100))
        self.log_jacobian = float(cal.get("log_jacobian", 0.0))
        net = keras.models.load_model(files["eps_model"], compile=False, safe_mode=True)
        self.eps_fn = EpsFunction(net, self.input_shape, int(cal["time_embedding"]), self.chain.T)

    def _generate_scaled(
        self,
        n: int,
        rng: np.random.Generator,
        sampler: str = "ddpm",
        steps: int | None = None,
        **unknown: Any,
    ) -> np.ndarray:
        if unknown:
            raise ValueError(f"unknown generate options: {', '.join(sorted(unknown))}")
        return sample(self.chain, self.eps_fn, self.input_shape, n, rng, sampler, steps)

    def answer(self, operation: str, inputs: np.ndarray | None, **options: Any) -> dict[str, Any]:
        if operation != "score" or inputs is None:
            return super().answer(operation, inputs, **options)
        x = self.scaler.transform(np.asarray(inputs, dtype=np.float32)).astype(np.float64)
        scores = (
            bound_nats(self.chain, self.eps_fn, x, self.strata, seed=SCORE_SEED, shared_noise=True)
            + self.log_jacobian
        )
        return score_answer(scores, self.threshold)
