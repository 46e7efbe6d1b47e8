"""The maths of Gaussian diffusion probabilistic models, apart from any network (NumPy, float64).

THERMODYNAMICS.md section B: the forward chain q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t I),
its schedules, the posterior q(x_{t−1} | x_t, x_0), the ε-parametrised reverse mean, ancestral
(DDPM) and deterministic (DDIM) sampling, the variational bound, and the closed-form entropy
production of the forward chain for Gaussian data. Time runs t = 1..T; index 0 of every table
is t = 0 (ᾱ_0 = 1, β_0 = 0), so `table[t]` reads naturally.

A network enters only as `eps_fn(x_t, t) -> ε̂` on NumPy arrays (t an int array, one per row),
so the same samplers and bound serve training-time evaluation, serving and tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BETA_MAX = 0.999  # every β_t is clipped here: the 2015 chain's last β is 1 (ᾱ_T = 0)
COSINE_OFFSET = 0.008  # s of Nichol & Dhariwal (2021)
SCHEDULES = ("linear", "cosine", "sohl_dickstein")
SAMPLERS = ("ddpm", "ddim")
LOG_2PI = math.log(2 * math.pi)

EpsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def betas_for(
    schedule: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """β_1..β_T of a named schedule, clipped at BETA_MAX."""
    t = np.arange(1, timesteps + 1, dtype=np.float64)
    if schedule == "linear":  # DDPM: 1e-4 → 0.02 over T = 1000
        betas = np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    elif schedule == "cosine":  # ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s)) π/2)
        phase = (np.arange(timesteps + 1) / timesteps + COSINE_OFFSET) / (1 + COSINE_OFFSET)
        f = np.cos(phase * (math.pi / 2)) ** 2
        betas = 1.0 - f[1:] / f[:-1]
    elif schedule == "sohl_dickstein":  # the 2015 paper's short chains: β_t = 1/(T − t + 1)
        betas = 1.0 / (timesteps - t + 1.0)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    return np.clip(betas, 0.0, BETA_MAX)


def gaussian_kl_to_standard(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """KL(N(mean, variance) ‖ N(0, 1)) per coordinate."""
    return 0.5 * (mean**2 + variance - 1.0 - np.log(variance))


def timestep_subsequence(timesteps: int, steps: int) -> np.ndarray:
    """`steps` increasing timesteps from 1 to T, evenly spaced (both ends included)."""
    if steps == timesteps:
        return np.arange(1, timesteps + 1)
    if steps == 1:
        return np.array([timesteps])
    # floor(x + ½) is monotone and the spacing is ≥ 1, so the rounded steps are distinct
    return np.floor(np.linspace(1, timesteps, steps) + 0.5).astype(np.int64)


def stratified_timesteps(timesteps: int, strata: int) -> list[tuple[int, int]]:
    """Half-open ranges [a, b) covering t = 2..T, sized geometrically: the bound's terms
    L_{t−1} fall roughly like 1/t, so early strata are single steps (exact) and later ones
    wide. With `strata` ≥ T − 1 every range is one step and the sum is exact."""
    if timesteps < 2:
        return []
    if strata >= timesteps - 1:
        return [(t, t + 1) for t in range(2, timesteps + 1)]
    edges = np.unique(np.floor(np.geomspace(2, timesteps + 1, strata + 1)).astype(np.int64))
    edges[0], edges[-1] = 2, timesteps + 1
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


@dataclass
class GaussianDiffusion:
    """Tables of one forward chain, and everything computed from them."""

    betas: np.ndarray  # β_1..β_T

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError("a chain needs at least one step")
        if not ((betas > 0) & (betas <= BETA_MAX)).all():
            raise ValueError(f"every β_t must be in (0, {BETA_MAX}]")
        self.T = len(betas)
        self.beta = np.concatenate([[0.0], betas])
        self.alpha = 1.0 - self.beta
        self.alpha_bar = np.cumprod(self.alpha)
        prev = np.concatenate([[1.0], self.alpha_bar[:-1]])
        self.alpha_bar_prev = prev
        # β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); β̃_0 and β̃_1 are 0
        with np.errstate(divide="ignore", invalid="ignore"):
            tilde = self.beta * (1.0 - prev) / (1.0 - self.alpha_bar)
        tilde[0] = 0.0
        self.beta_tilde = tilde

    @classmethod
    def named(
        cls, schedule: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> GaussianDiffusion:
        return cls(betas_for(schedule, timesteps, beta_start, beta_end))

    # --- forward process ---------------------------------------------------------------

    def q_sample(self, x0: np.ndarray, t: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: a draw of q(x_t | x_0)."""
        a = self._rows(self.alpha_bar, t, x0.ndim)
        return np.sqrt(a) * x0 + np.sqrt(1.0 - a) * eps

    def posterior(
        self, x0: np.ndarray, xt: np.ndarray, t: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean μ̃_t and variance β̃_t of q(x_{t−1} | x_t, x_0)."""
        d = x0.ndim
        beta, a_bar = self._rows(self.beta, t, d), self._rows(self.alpha_bar, t, d)
        prev, alpha = self._rows(self.alpha_bar_prev, t, d), self._rows(self.alpha, t, d)
        mean = (np.sqrt(prev) * beta * x0 + np.sqrt(alpha) * (1.0 - prev) * xt) / (1.0 - a_bar)
        return mean, self._rows(self.beta_tilde, t, d) * np.ones_like(x0)

    def model_mean(self, xt: np.ndarray, t: np.ndarray | int, eps_hat: np.ndarray) -> np.ndarray:
        """μ_θ = (x_t − β_t ε_θ / √(1 − ᾱ_t)) / √α_t."""
        d = xt.ndim
        beta, a_bar = self._rows(self.beta, t, d), self._rows(self.alpha_bar, t, d)
        return (xt - beta * eps_hat / np.sqrt(1.0 - a_bar)) / np.sqrt(self._rows(self.alpha, t, d))

    def predict_x0(self, xt: np.ndarray, t: np.ndarray | int, eps_hat: np.ndarray) -> np.ndarray:
        a = self._rows(self.alpha_bar, t, xt.ndim)
        return (xt - np.sqrt(1.0 - a) * eps_hat) / np.sqrt(a)

    @staticmethod
    def _rows(table: np.ndarray, t: np.ndarray | int, ndim: int) -> np.ndarray:
        values = table[np.asarray(t)]
        return np.reshape(values, np.shape(values) + (1,) * (ndim - np.ndim(values)))

    # --- sampling ----------------------------------------------------------------------

    def check_sampling(self, sampler: str, steps: int | None) -> int:
        """The number of steps to take; ValueError naming the limits when out of range."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        steps = self.T if steps is None else int(steps)
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must be between 1 and the chain's {self.T} timesteps")
        return steps

    def sample(
        self,
        eps_fn: EpsFn,
        shape: tuple[int, ...],
        rng: np.random.Generator,
        sampler: str = "ddpm",
        steps: int | None = None,
    ) -> np.ndarray:
        """Draw x_0 from x_T ~ N(0, I) backwards through `steps` of the chain.

        `ddpm`: ancestral sampling, σ² = β̃ (with fewer steps: on the respaced chain of the
        chosen timesteps, ᾱ'_i = ᾱ_{τ_i}); the last step returns the mean. `ddim`: the
        deterministic η = 0 update of Song et al., x_{τ'} = √ᾱ' x̂_0 + √(1 − ᾱ') ε̂.
        """
        n_steps = self.check_sampling(sampler, steps)
        taus = timestep_subsequence(self.T, n_steps)
        x = rng.standard_normal(shape)
        for i in range(len(taus) - 1, -1, -1):
            t = int(taus[i])
            prev_bar = self.alpha_bar[taus[i - 1]] if i > 0 else 1.0
            eps_hat = np.asarray(eps_fn(x, np.full(shape[0], t)), dtype=np.float64)
            x0_hat = self.predict_x0(x, t, eps_hat)
            if sampler == "ddim":
                x = math.sqrt(prev_bar) * x0_hat + math.sqrt(1.0 - prev_bar) * eps_hat
                continue
            a_bar = self.alpha_bar[t]
            beta = 1.0 - a_bar / prev_bar  # the (respaced) step's β
            c0 = math.sqrt(prev_bar) * beta / (1.0 - a_bar)
            ct = math.sqrt(1.0 - beta) * (1.0 - prev_bar) / (1.0 - a_bar)
            x = c0 * x0_hat + ct * x
            if i > 0:
                variance = beta * (1.0 - prev_bar) / (1.0 - a_bar)
                x = x + math.sqrt(variance) * rng.standard_normal(shape)
        return x

    # --- the variational bound -----------------------------------------------------------

    def prior_term(self, x0: np.ndarray) -> np.ndarray:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per row (nats)."""
        a = self.alpha_bar[self.T]
        kl = gaussian_kl_to_standard(math.sqrt(a) * x0, np.full_like(x0, 1.0 - a))
        return kl.reshape(len(x0), -1).sum(axis=1)

    def term_weight(self, t: np.ndarray | int) -> np.ndarray:
        """β_t² / (2 σ_t² α_t (1 − ᾱ_t)) with σ_t² = β̃_t, for t ≥ 2: L_{t−1} = weight · ‖ε − ε_θ‖²
        is then the whole KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)), variances being equal."""
        t = np.asarray(t)
        b = self.beta[t]
        return b**2 / (2.0 * self.beta_tilde[t] * self.alpha[t] * (1.0 - self.alpha_bar[t]))

    def decoder_nll(self, x0: np.ndarray, eps: np.ndarray, eps_hat: np.ndarray) -> np.ndarray:
        """L_0 = −ln N(x_0; μ_θ(x_1, 1), σ_1² I) with σ_1² = β_1, per row, for x_1 drawn with
        noise `eps` (then x_0 − μ_θ = √β_1 (ε_θ − ε) / √α_1)."""
        beta = self.beta[1]
        mean = self.model_mean(self.q_sample(x0, np.ones(len(x0), np.int64), eps), 1, eps_hat)
        nll = 0.5 * (LOG_2PI + math.log(beta)) + (x0 - mean) ** 2 / (2.0 * beta)
        return nll.reshape(len(x0), -1).sum(axis=1)

    def bound(
        self,
        x0: np.ndarray,
        eps_fn: EpsFn,
        rng: np.random.Generator,
        strata: int = 100,
        shared_noise: bool = False,
    ) -> dict[str, np.ndarray]:
        """The variational bound −ln p(x_0) ≤ L_T + Σ_{t≥2} L_{t−1} + L_0 per row (nats, in the
        units the chain diffuses). The sum over t is estimated without bias by stratifying
        t = 2..T (one uniform t per stratum, weighted by its width; exact when `strata` ≥ T−1)
        with one ε per term. `shared_noise`: every row gets the same t and ε draws, so a row's
        value depends on the row alone (anomaly scores)."""
        x0 = np.asarray(x0, dtype=np.float64)
        n = len(x0)
        draws = 1 if shared_noise else n

        def noise() -> np.ndarray:
            e = rng.standard_normal((draws, *x0.shape[1:]))
            return np.broadcast_to(e, x0.shape) if shared_noise else e

        # Every draw first, then one network pass over all of them (the network is the cost).
        strata_ranges = stratified_timesteps(self.T, strata)
        ts = [np.ones(n, np.int64)]
        for low, high in strata_ranges:
            ts.append(np.broadcast_to(rng.integers(low, high, size=draws), (n,)).astype(np.int64))
        noises = [noise() for _ in ts]
        t_all, eps_all = np.concatenate(ts), np.concatenate(noises)
        x_all = self.q_sample(np.concatenate([x0] * len(ts)), t_all, eps_all)
        eps_hat = np.asarray(eps_fn(x_all, t_all), dtype=np.float64).reshape(len(ts), *x0.shape)
        decoder = self.decoder_nll(x0, noises[0], eps_hat[0])
        middle = np.zeros(n)
        for k, (low, high) in enumerate(strata_ranges, start=1):
            err = ((noises[k] - eps_hat[k]) ** 2).reshape(n, -1).sum(axis=1)
            middle += (high - low) * self.term_weight(ts[k]) * err
        prior = self.prior_term(x0)
        return {
            "total": prior + middle + decoder,
            "prior": prior,
            "diffusion": middle,
            "decoder": decoder,
        }

    # --- thermodynamics ------------------------------------------------------------------

    def gaussian_kl_path(self, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
        """KL(q_t ‖ N(0, I)) for t = 0..T when the data are N(m, diag s²): v_t = 1 + ᾱ_t (s² − 1),
        KL_t = Σ_i ½ (v_{t,i} − 1 − ln v_{t,i}) + ᾱ_t m_i² / 2."""
        m = np.asarray(mean, dtype=np.float64).reshape(-1)
        s2 = np.asarray(variance, dtype=np.float64).reshape(-1)
        a = self.alpha_bar[:, None]
        v = 1.0 + a * (s2[None, :] - 1.0)
        return (0.5 * (v - 1.0 - np.log(v)) + 0.5 * a * m[None, :] ** 2).sum(axis=1)

    def entropy_production(self, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
        """σ_t = KL(q_{t−1} ‖ π) − KL(q_t ‖ π) ≥ 0 for t = 1..T (nats; index 0 is t = 1): each
        kernel is in detailed balance with π = N(0, I). For non-Gaussian data this moment-matched
        value is a lower bound on each step's true σ_t (data processing inequality)."""
        kl = self.gaussian_kl_path(mean, variance)
        return kl[:-1] - kl[1:]
