"""bench/anomaly_quality.py's pooling of a split's seeds: the means, the best single detector
of the means, and the standard error of the gap from the seeds' bootstrap draws averaged."""

from __future__ import annotations

import numpy as np
import pytest

from bench.anomaly_quality import gaps, pool


def run(seed: int, forest: float, pca: float, ensemble: float) -> dict:
    aucs = {"isolation_forest": forest, "pca": pca, "ensemble zscore-mean": ensemble}
    return {"data": "wine", "split": "anomaly 0", "seed": seed, "roc_auc": aucs}


def test_a_split_is_the_mean_of_its_seeds_and_its_gap_the_mean_gap() -> None:
    runs = [run(0, 0.90, 0.99, 0.95), run(1, 0.96, 0.93, 0.94)]
    rng = np.random.default_rng(0)
    draws = [rng.normal(0.95, 0.02, size=(200, 3)) for _ in runs]
    [split] = pool(runs, draws)
    assert split["seeds"] == [0, 1]
    assert split["roc_auc"]["pca"] == pytest.approx(0.96)
    gap = split["gaps"]["ensemble zscore-mean"]
    # pca's mean (0.96) is the best single's, not the forest's (0.93); the gap is of the means
    assert gap["best"] == "pca" and gap["gap"] == pytest.approx(0.96 - 0.945)
    averaged = (draws[0] + draws[1]) / 2
    assert gap["se"] == pytest.approx(np.std(averaged[:, 1] - averaged[:, 2], ddof=1))
    # each seed's own gap is against that seed's best single
    assert gaps(runs[1]["roc_auc"], draws[1])["ensemble zscore-mean"]["best"] == "isolation_forest"


def test_splits_are_pooled_apart() -> None:
    other = {**run(0, 0.8, 0.7, 0.75), "data": "digits", "split": "normal 8"}
    draws = [np.zeros((10, 3)), np.zeros((10, 3))]
    pooled = pool([run(0, 0.9, 0.9, 0.9), other], draws)
    assert [(p["data"], p["seeds"]) for p in pooled] == [("wine", [0]), ("digits", [0])]
    assert pooled[1]["gaps"]["ensemble zscore-mean"] == {
        "best": "isolation_forest",
        "gap": pytest.approx(0.05),
        "se": 0.0,
    }
