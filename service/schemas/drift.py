"""The drift test's options (query parameters, so that every body format takes them) and its
JSON answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query
from pydantic import BaseModel, Field

from ml.anomaly.drift import DEFAULT_ALPHA, DEFAULT_PERMUTATIONS, MAX_PERMUTATIONS, MMD_ROWS

Permutations = Annotated[
    int,
    Query(
        ge=1,
        le=MAX_PERMUTATIONS,
        description="Permutations of the MMD's permutation test (its p-value's resolution is "
        "1 / (permutations + 1)).",
    ),
]
Alpha = Annotated[
    float,
    Query(
        gt=0,
        lt=1,
        description="Significance level of the MMD test and of each feature's "
        "false-discovery-corrected test.",
    ),
]
Seed = Annotated[
    int,
    Query(ge=0, lt=2**31, description="The permutations' and the MMD subsample's seed."),
]


class FeatureDrift(BaseModel):
    feature: int = Field(description="The feature's index in a flattened row.")
    statistic: float = Field(description="The two-sample Kolmogorov–Smirnov statistic.")
    p_value: float = Field(description="Its p-value.")
    p_value_adjusted: float = Field(description="Benjamini–Hochberg adjusted over the features.")
    drift: bool = Field(description="p_value_adjusted ≤ alpha.")


class DriftOut(BaseModel):
    drift: bool = Field(description="The MMD test's p-value is at most alpha.")
    p_value: float = Field(description="The MMD's permutation p-value.")
    statistic: float = Field(description="The unbiased MMD² against the reference sample.")
    bandwidth: float = Field(description="The Gaussian kernel's σ (median heuristic).")
    alpha: float
    permutations: int
    rows: int = Field(description="Rows sent; every one enters the per-feature tests.")
    mmd_rows: int = Field(description=f"Rows in the MMD: a seeded subsample beyond {MMD_ROWS}.")
    reference_rows: int = Field(description="Rows of the model's reference sample.")
    features_drifted: int = Field(description="Features whose adjusted p-value ≤ alpha.")
    features: list[FeatureDrift]


__all__ = ["DEFAULT_ALPHA", "DEFAULT_PERMUTATIONS", "Alpha", "DriftOut", "Permutations", "Seed"]
