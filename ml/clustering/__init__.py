"""Clustering: k-means, deterministic annealing, hierarchical, and the deep clustering of DEC
and DCN."""

KIND_MODULES: tuple[str, ...] = ("annealing", "dcn", "dec", "hierarchical", "kmeans")
