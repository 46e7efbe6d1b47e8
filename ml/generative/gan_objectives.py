"""The two players' objectives of the `gan` kind, per example, each with the other player fixed.

`loss` (the discriminator's logit is d):

- `non_saturating` (Goodfellow et al. 2014): L_D = softplus(−d_real) + softplus(d_fake) (one-sided
  label smoothing on the real term), L_G = softplus(−d_fake) = −ln D(G(z)).
- `wgan_gp` (Gulrajani et al. 2017): L_D = d_fake − d_real + λ (|∇D(x̂)| − 1)², x̂ on the line
  between a real and a fake row; L_G = −d_fake. d_real − d_fake estimates the Wasserstein-1
  distance.
- `hinge` (Miyato et al. 2018, with a spectrally normalised discriminator): L_D = max(0, 1 −
  d_real) + max(0, 1 + d_fake), L_G = −d_fake.

Any of them can add the R1 penalty γ/2 |∇D(x_real)|² (Mescheder et al. 2018) to L_D.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def discriminator_loss(
    loss: str, real_logit: tf.Tensor, fake_logit: tf.Tensor, label_smoothing: float = 0.0
) -> tf.Tensor:
    """Per example, without penalties."""
    if loss == "non_saturating":
        real = tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.fill(tf.shape(real_logit), 1.0 - label_smoothing), logits=real_logit
        )
        return real + tf.nn.softplus(fake_logit)
    if loss == "wgan_gp":
        return fake_logit - real_logit
    if loss == "hinge":
        return tf.nn.relu(1.0 - real_logit) + tf.nn.relu(1.0 + fake_logit)
    raise ValueError(f"unknown loss {loss!r}")


def generator_loss(loss: str, fake_logit: tf.Tensor) -> tf.Tensor:
    """Per example."""
    if loss == "non_saturating":
        return tf.nn.softplus(-fake_logit)
    return -fake_logit


def input_gradient_norm(critic: Any, x: tf.Tensor) -> tf.Tensor:
    """|∇ₓ d(x)| per row (the critic maps each row on its own: no batch statistics)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(critic(x))
    grad = tape.gradient(total, x)
    return tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(grad, (tf.shape(x)[0], -1))), axis=1) + 1e-12)


def gradient_penalty(critic: Any, real: tf.Tensor, fake: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """(|∇D(x̂)| − 1)² per example, x̂ = ε x_real + (1 − ε) x_fake, ε ~ U(0, 1) per row."""
    shape = tf.concat([tf.shape(real)[:1], tf.ones([tf.rank(real) - 1], tf.int32)], 0)
    eps = tf.random.stateless_uniform(shape, seed)
    mixed = eps * real + (1.0 - eps) * fake
    return tf.square(input_gradient_norm(critic, mixed) - 1.0)


class PlayerObjective:
    """One player's loss with the other player held fixed: trains `player`'s variables."""

    player = ""

    def __init__(self, players: Any) -> None:
        self.players = players

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return list(self.players.network(self.player).trainable_variables)


class DiscriminatorObjective(PlayerObjective):
    """Per example: the objective's L_D on (x_i, G(z_i)) plus its penalties, the generator fixed."""

    player = "discriminator"

    def __init__(
        self,
        players: Any,
        loss: str,
        *,
        label_smoothing: float = 0.0,
        gradient_penalty: float = 10.0,
        r1: float = 0.0,
    ) -> None:
        super().__init__(players)
        self.loss, self.smoothing = loss, label_smoothing
        self.gp, self.r1 = gradient_penalty, r1

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        p = self.players
        fake = tf.stop_gradient(p.generator(p.z(tf.shape(x)[0], seed, 1), training=True))
        real_logit, fake_logit = p.logit(x), p.logit(fake)
        loss = discriminator_loss(self.loss, real_logit, fake_logit, self.smoothing)
        extras = {
            "player_loss": loss,  # not "loss": the trainer's window keeps that name
            # With hard labels, what the Jensen-Shannon bound of d as a classifier needs.
            "real_bce": tf.nn.softplus(-real_logit),
            "fake_bce": tf.nn.softplus(fake_logit),
            "real_correct": tf.cast(real_logit > 0, tf.float32),
            "fake_correct": tf.cast(fake_logit < 0, tf.float32),
            "critic_gap": real_logit - fake_logit,
        }
        if self.loss == "wgan_gp":
            penalty = gradient_penalty(
                p.logit, x, fake, tf.random.experimental.stateless_fold_in(seed, 5)
            )
            extras["gradient_penalty"] = penalty
            loss = loss + self.gp * penalty
        if self.r1 > 0:
            r1 = tf.square(input_gradient_norm(p.logit, x))
            extras["r1_penalty"] = r1
            loss = loss + 0.5 * self.r1 * r1
        return loss, extras


class GeneratorObjective(PlayerObjective):
    """Per example: the objective's L_G on G(z_i), the discriminator fixed; x only sets how many
    z are drawn."""

    player = "generator"

    def __init__(self, players: Any, loss: str) -> None:
        super().__init__(players)
        self.loss = loss

    def per_example_loss(
        self, x: tf.Tensor, seed: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        p = self.players
        fake = p.generator(p.z(tf.shape(x)[0], seed, 2), training=True)
        loss = generator_loss(self.loss, p.logit(fake))
        return loss, {"player_loss": loss}
