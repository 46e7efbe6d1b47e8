"""Kinds not yet moved to their family's package; each registers itself with
:func:`ml.core.registry.register_kind`."""

KIND_MODULES: tuple[str, ...] = (
    "annealing",
    "cooling",
    "dcn",
    "dec",
    "diffusion",
    "gan",
    "hierarchical",
    "ising",
    "jarzynski",
    "kmeans",
    "langevin",
    "pca",
    "tsne",
)
