"""Generative models: GANs and diffusion probabilistic models."""

KIND_MODULES: tuple[str, ...] = ("diffusion", "gan")
