"""The thermodynamic history a user gets with the defaults: a default `autoencoder` and a default
`vae` job on builtin:breast_cancer (the default optimizer is Adam) record every metric of
THERMODYNAMICS.md section A at almost every measuring point after the first epoch, with at least
20 points; a 3-epoch job (the "auto" batch size gives an epoch at least 8 steps; an epoch's
partial last batch is not measured) measures every full-batch step, at least 20."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ml.core.datasets import Dataset, load_builtin
from tests.ml.anomaly.test_autoencoder import TELEMETRY, train

SECTION_A = TELEMETRY[: TELEMETRY.index("entropy_production_excess") + 1]  # without the losses


@pytest.fixture(scope="module")
def cancer() -> Dataset:
    return load_builtin("breast_cancer")


@pytest.mark.parametrize("kind", ["autoencoder", "vae"])
@pytest.mark.parametrize("epochs", [None, 3])  # None: the default number of epochs
def test_default_jobs_record_every_section_a_metric(
    kind: str, epochs: int | None, tmp_path: Path, cancer: Dataset
) -> None:
    spec = {} if epochs is None else {"training": {"epochs": epochs}}
    _, reporter = train(kind, spec, tmp_path, cancer)
    epoch_ends = set(reporter.points["epoch"])
    measured = sorted(reporter.points["internal_energy"])
    unmeasured = set(range(1, max(epoch_ends) + 1)) - set(measured)
    if epochs is None:
        assert len(measured) >= 20, measured
    else:  # a short job: every step but the epochs' partial last batches
        assert len(measured) >= 20 and unmeasured <= epoch_ends, (measured, epoch_ends)
    later = [step for step in measured if step > min(epoch_ends)]
    assert later
    for name in SECTION_A:
        values = [reporter.points[name].get(step, math.nan) for step in later]
        defined = sum(math.isfinite(v) for v in values)
        assert defined >= 0.9 * len(later), (name, values)
