"""Anomaly detection: autoencoders and VAEs, the classical detectors, their comparison and
ensembles, and the anomaly scoring they serve."""

KIND_MODULES: tuple[str, ...] = ("autoencoder", "vae", "detector", "comparison", "ensemble")
