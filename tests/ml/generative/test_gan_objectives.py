"""The `gan` kind's objectives on fixed inputs, worked out by hand; the gradient penalty, spectral
normalisation, the weight average and the presets."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ml.generative.gan import DEFAULT_LEARNING_RATE, GanParams, GanSpec
from ml.generative.gan_networks import SpectralConv2D, SpectralDense
from ml.generative.gan_objectives import (
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    input_gradient_norm,
)
from ml.generative.gan_quality import GeneratorAverage

REAL = tf.constant([2.0, -1.0])
FAKE = tf.constant([0.5, -3.0])


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


@pytest.mark.parametrize(
    ("loss", "smoothing", "expected"),
    [
        ("non_saturating", 0.0, [softplus(-2) + softplus(0.5), softplus(1) + softplus(-3)]),
        # one-sided smoothing: the real term is BCE with target 0.9
        (
            "non_saturating",
            0.1,
            [0.9 * softplus(-2) + 0.1 * softplus(2) + softplus(0.5), None],
        ),
        ("wgan_gp", 0.0, [0.5 - 2.0, -3.0 + 1.0]),
        ("hinge", 0.0, [max(0, 1 - 2) + max(0, 1 + 0.5), max(0, 1 + 1) + max(0, 1 - 3)]),
    ],
)
def test_discriminator_losses_by_hand(
    loss: str, smoothing: float, expected: list[float | None]
) -> None:
    got = discriminator_loss(loss, REAL, FAKE, smoothing).numpy()
    for value, want in zip(got, expected, strict=True):
        if want is not None:
            assert value == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ("non_saturating", [softplus(-0.5), softplus(3.0)]),  # −ln σ(d)
        ("wgan_gp", [-0.5, 3.0]),
        ("hinge", [-0.5, 3.0]),
    ],
)
def test_generator_losses_by_hand(loss: str, expected: list[float]) -> None:
    assert generator_loss(loss, FAKE).numpy() == pytest.approx(expected, rel=1e-5)


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        discriminator_loss("minimax", REAL, FAKE)


def test_the_input_gradient_norm_is_per_row() -> None:
    x = tf.constant([[3.0, 4.0], [0.0, 1.0], [-1.0, 0.0]])
    # d(x) = Σ x², ∇ = 2x: norms 10, 2, 2
    norms = input_gradient_norm(lambda v: tf.reduce_sum(tf.square(v), axis=1), x)
    assert norms.numpy() == pytest.approx([10.0, 2.0, 2.0], rel=1e-5)


def test_gradient_penalty_of_a_linear_critic() -> None:
    # d(x) = w·x has |∇d| = |w| = 5 wherever x̂ falls: (5 − 1)² = 16 for every row
    w = tf.constant([[3.0], [4.0]])
    real = tf.random.normal((6, 2), seed=1)
    fake = tf.random.normal((6, 2), seed=2)
    penalty = gradient_penalty(lambda v: (v @ w)[:, 0], real, fake, tf.constant([1, 2]))
    assert penalty.numpy() == pytest.approx([16.0] * 6, rel=1e-5)
    # on an image-shaped row the norm runs over all of its values
    images = tf.ones((2, 4, 4, 1))  # 16 values a row, ∂d/∂x = 0.5 each: |∇d| = 2
    penalty = gradient_penalty(
        lambda v: 0.5 * tf.reduce_sum(v, axis=[1, 2, 3]), images, 0 * images, tf.constant([0, 1])
    )
    assert penalty.numpy() == pytest.approx([(2.0 - 1.0) ** 2] * 2, rel=1e-5)


@pytest.mark.parametrize("layer", [SpectralDense(7), SpectralConv2D(5)])
def test_spectral_norm_brings_the_largest_singular_value_to_one(layer: keras.layers.Layer) -> None:
    x = tf.random.normal((4, 8, 8, 3) if isinstance(layer, SpectralConv2D) else (4, 12), seed=0)
    layer(x)
    layer.kernel.assign(3.0 * layer.kernel)  # σ well above 1 to begin with
    raw = np.linalg.svd(layer.kernel.numpy().reshape(-1, layer.units), compute_uv=False)[0]
    assert raw > 2
    for _ in range(30):  # the power iteration advances once a training call
        layer(x, training=True)
    normalized = layer.normalized_kernel().numpy().reshape(-1, layer.units)
    assert np.linalg.svd(normalized, compute_uv=False)[0] == pytest.approx(1.0, abs=1e-3)


def test_spectral_norm_passes_gradients_through_sigma() -> None:
    layer = SpectralDense(3)
    x = tf.random.normal((5, 4), seed=3)
    layer(x)
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(layer(x, training=True))
    grad = tape.gradient(out, layer.kernel)
    assert grad is not None and np.isfinite(grad.numpy()).all()
    # scaling the kernel leaves W/σ unchanged: the gradient is orthogonal to the kernel
    dot = float(tf.reduce_sum(grad * layer.kernel))
    assert abs(dot) < 1e-4 * float(tf.norm(grad) * tf.norm(layer.kernel))


def test_the_generator_average_warms_up_then_decays() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    average = GeneratorAverage(model, decay=0.999)
    start = [w.copy() for w in average.model.get_weights()]
    model.set_weights([w + 1.0 for w in start])
    average.update()  # t = 0: decay min(0.999, 1/10) = 0.1
    for got, w in zip(average.model.get_weights(), start, strict=True):
        assert got == pytest.approx(w + 0.9, rel=1e-5)
    assert GeneratorAverage(model, decay=0.0).model is model


def _spec(params: dict, training: dict | None = None) -> GanSpec:
    raw = {"kind": "gan", "dataset": "builtin:swiss_roll", "params": params}
    if training is not None:
        raw["training"] = training
    return GanSpec.model_validate(raw)


def test_the_seed_preset_is_the_articles_gan() -> None:
    from ml.generative.gan_model import Players

    spec = _spec({"preset": "seed"})
    params = spec.params
    assert (params.loss, params.discriminator_steps, params.ema, params.keep, params.r1) == (
        "non_saturating",
        1,
        0.0,
        "last",
        0.0,
    )
    opt = spec.training.optimizer  # Keras's Adam, as the article compiles it
    assert (opt.learning_rate, opt.beta_1, opt.beta_2) == (1e-3, None, None)
    assert (spec.training.batch_size, spec.training.epochs) == (64, 20)
    players = Players(params, (784,), tanh=True)
    layers = [
        (type(layer).__name__, getattr(layer, "units", None)) for layer in players.generator.layers
    ]
    assert layers == [
        ("InputLayer", None),
        ("Dense", 256),
        ("LeakyReLU", None),
        ("BatchNormalization", None),
        ("Dense", 512),
        ("LeakyReLU", None),
        ("BatchNormalization", None),
        ("Dense", 1024),
        ("LeakyReLU", None),
        ("BatchNormalization", None),
        ("Dense", 784),
    ]
    assert players.generator.input_shape == (None, 100)
    assert all(
        layer.momentum == 0.8
        for layer in players.generator.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert players.generator.layers[-1].activation.__name__ == "tanh"
    assert [type(layer).__name__ for layer in players.discriminator.layers] == [
        "InputLayer",
        "Dense",
        "LeakyReLU",
        "Dense",
        "LeakyReLU",
        "Dense",
    ]
    assert [layer.units for layer in players.discriminator.layers if hasattr(layer, "units")] == [
        512,
        256,
        1,
    ]


def test_the_default_preset_and_objective_defaults() -> None:
    assert GanParams() == GanParams(preset="default")  # the fields' defaults are the preset's
    spec = _spec({})
    opt = spec.training.optimizer
    assert (opt.learning_rate, opt.beta_1, opt.beta_2) == (DEFAULT_LEARNING_RATE, 0.5, 0.999)
    assert (spec.training.batch_size, spec.training.epochs) == (32, 40)
    assert _spec({}, {"epochs": 3}).training.epochs == 3
    assert (spec.params.loss, spec.params.r1, spec.params.ema) == ("non_saturating", 1.0, 0.999)
    assert not spec.params.spectral and spec.params.discriminator_steps == 1
    hinge = _spec({"loss": "hinge"})
    assert hinge.params.spectral and hinge.training.optimizer.beta_2 == 0.9
    wgan = _spec({"loss": "wgan_gp"}, {"optimizer": {"beta_2": 0.99}})
    assert wgan.params.discriminator_steps == 5 and not wgan.params.spectral
    assert (wgan.training.optimizer.beta_1, wgan.training.optimizer.beta_2) == (0.5, 0.99)
    assert _spec({"loss": "wgan_gp", "d_steps": 2}).params.discriminator_steps == 2
    sgd = _spec({}, {"optimizer": {"name": "sgd"}}).training.optimizer
    assert sgd.beta_1 is None and sgd.learning_rate == 1e-3
    # the seed preset's fields can be overridden one by one
    assert _spec({"preset": "seed", "loss": "hinge"}).params.latent_dim == 100
    stored = _spec({"loss": "hinge"}).model_dump()  # a stored spec re-reads the same
    assert GanSpec.model_validate(stored) == _spec({"loss": "hinge"})
    with pytest.raises(ValueError, match="label_smoothing"):
        _spec({"loss": "hinge", "label_smoothing": 0.1})


def test_epoch_quality_keeps_the_best_finite_epoch() -> None:
    from ml.generative.gan_quality import EpochQuality
    from ml.generative.shared import GenerativeData

    rng = np.random.default_rng(0)

    def real(n: int) -> np.ndarray:
        return rng.standard_normal((n, 2)).astype(np.float32)

    empty = np.zeros((0, 2), np.float32)
    data = GenerativeData(real(400), empty, real(400), real(300), real(300), None, None)  # type: ignore[arg-type]
    quality = EpochQuality.for_data(data, seed=0)
    assert quality is not None and quality.floor["energy_distance"] > 0
    good, shifted = real(300), real(300) + 3.0
    broken = good.copy()
    broken[0, 0] = np.nan
    points = []
    for epoch, rows in enumerate([shifted, good, broken, shifted], start=1):
        points.append(quality.measure(rows))
        quality.note(epoch, 0.0, [rows])
    assert points[1]["val_energy_distance"] < points[0]["val_energy_distance"]
    assert math.isnan(points[2]["val_energy_distance"])  # never the best
    assert quality.best_epoch == 2 and np.array_equal(quality.best_weights[0], good)
    assert quality.bad_epochs == 2
    assert points[0]["val_energy_distance_floor"] == quality.floor["energy_distance"]
