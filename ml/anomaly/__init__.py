"""Autoencoders and variational autoencoders, and the anomaly scoring they serve."""

KIND_MODULES: tuple[str, ...] = ("autoencoder", "vae", "detector", "comparison")
