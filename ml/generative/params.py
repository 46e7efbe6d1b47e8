"""Spec fields every generative kind shares (pydantic only: imported at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field


def evaluation_split_field() -> Any:
    """The share of rows held out for sample quality."""
    return Field(
        0.2,
        ge=0,
        lt=0.9,
        description="Rows held out for sample quality (two halves: against the model, and "
        "against each other for the floor).",
    )


@dataclass(frozen=True)
class ObjectiveDefaults:
    """What a GAN objective's paper trains with, where a spec leaves it open."""

    d_steps: int
    beta_1: float  # Adam's
    beta_2: float
    spectral_norm: bool


OBJECTIVE_DEFAULTS = {
    "non_saturating": ObjectiveDefaults(1, 0.5, 0.999, False),  # DCGAN's Adam (Radford 2015)
    "wgan_gp": ObjectiveDefaults(5, 0.5, 0.9, False),  # Gulrajani 2017
    "hinge": ObjectiveDefaults(1, 0.5, 0.9, True),  # Miyato 2018
}
