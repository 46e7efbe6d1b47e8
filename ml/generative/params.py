"""Spec fields every generative kind shares (pydantic only: imported at start-up)."""

from __future__ import annotations

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
