"""Dimensionality reduction: PCA and parametric t-SNE."""

KIND_MODULES: tuple[str, ...] = ("pca", "tsne")
