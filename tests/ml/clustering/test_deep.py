"""What `dec` and `dcn` share through their driver: a cluster update every `update_interval`
optimizer steps, and a resumed run that goes on with the cluster state of the last update."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ml.core.datasets import Dataset
from tests.ml.clustering import test_dcn, test_dec
from tests.ml.clustering.deep_setup import FAST, STEPS_PER_EPOCH, four_blobs

Fit = Callable[..., tuple[Any, Any]]
# Each kind's runs, and the metric its cluster update records.
KINDS = pytest.mark.parametrize(
    "fit, metric", [(test_dec.fit, "kl_loss"), (test_dcn.fit, "kmeans_loss")], ids=["dec", "dcn"]
)
EVERY_5 = {"update_interval": 5}  # not a divisor of an epoch's 13 steps
STEPS_RUN = FAST["epochs"] * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def blobs() -> Dataset:
    return four_blobs()


@KINDS
def test_clusters_are_updated_every_update_interval_steps(
    fit: Fit, metric: str, tmp_path: Path, blobs: Dataset
) -> None:
    outcome, reporter = fit(tmp_path, blobs, params=EVERY_5)
    assert outcome.result["steps"] == STEPS_RUN
    updates, _ = reporter.series(metric)
    assert updates == list(range(0, STEPS_RUN + 1, 5))  # the k-means start, then every 5 steps
    assert reporter.series("changed_fraction")[0][-5:] == updates[-5:]
    # progress: 3 pre-training epochs take 3/7 of the way, 4 clustering epochs the rest
    expected = [k / 7 for k in range(1, 8)] + [1.0]
    assert reporter.fractions == pytest.approx(expected)


@pytest.mark.slow
@KINDS
def test_a_resumed_run_goes_on_with_the_clusters_in_force(
    fit: Fit, metric: str, tmp_path: Path, blobs: Dataset
) -> None:
    """A checkpoint (epoch 1, step 13) comes 3 steps after the last update (step 10): the run
    that resumes from it trains on with the targets or centroids of step 10, as the whole run
    did."""
    whole, _ = fit(tmp_path / "whole", blobs, params=EVERY_5)
    fit(tmp_path / "cut", blobs, params=EVERY_5, training={**FAST, "epochs": 1})
    resumed, points = fit(tmp_path / "cut", blobs, params=EVERY_5)
    assert resumed.result["resumed"] is True
    assert points.series(metric)[0] == list(range(15, STEPS_RUN + 1, 5))
    assert resumed.result[metric] == pytest.approx(whole.result[metric], rel=1e-5)
    assert resumed.result["ari"] == whole.result["ari"]


@pytest.mark.parametrize(
    "rows, batch_size, expected",
    [
        (1797, 256, 8),  # digits: one epoch's steps, fewer than the paper's 140
        (70_000, 256, 140),  # MNIST: the paper's T, about half an epoch
        (101, 256, 2),  # fewer rows than a batch: the batch shrinks to 100, two steps
    ],
)
def test_the_default_update_interval_is_the_papers_or_an_epoch(
    rows: int, batch_size: int, expected: int
) -> None:
    from ml.clustering.deep_spec import DeepClusteringParams
    from ml.core.training import Trainer
    from ml.core.training_config import TrainingConfig
    from tests.ml.test_training import LinearObjective

    config = TrainingConfig.model_validate({"batch_size": batch_size})
    steps = Trainer(LinearObjective(), config, None).steps_per_epoch(rows)  # type: ignore[arg-type]
    assert DeepClusteringParams().steps_between_updates(steps) == expected
    assert DeepClusteringParams(update_interval=7).steps_between_updates(steps) == 7
