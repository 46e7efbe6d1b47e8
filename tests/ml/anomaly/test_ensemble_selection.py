"""An ensemble's `selection`: the members chosen on labelled anomalies that no member fits and
that are not evaluation rows; the AUC it ranks subsets by; what it does without such rows."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import percentileofscore
from sklearn.metrics import roc_auc_score

from ml.anomaly import drift, selection
from ml.anomaly.ensemble import EnsembleSpec
from ml.core.datasets import Dataset, load_builtin
from ml.core.reporting import JobFailed, RunContext
from ml.reduction import shared as reduction
from ml.reduction.pca import split
from tests.ml.anomaly.test_autoencoder import serve, train


def test_the_auc_is_scikit_learns_with_ties() -> None:
    rng = np.random.default_rng(0)
    normal = rng.integers(0, 5, (40, 3)).astype(float)  # many ties
    anomalous = rng.integers(1, 7, (25, 3)).astype(float)
    truth = np.r_[np.zeros(40), np.ones(25)]
    expected = [roc_auc_score(truth, np.r_[normal[:, j], anomalous[:, j]]) for j in range(3)]
    np.testing.assert_allclose(selection.roc_aucs(normal, anomalous), expected, rtol=1e-12)


@pytest.mark.parametrize("combine", ["mean", "max"])
def test_it_chooses_the_subset_that_ranks_anomalies_best(combine: str) -> None:
    """Against a brute force over every subset with scikit-learn's AUC; the informative member
    is kept and the one that inverts the order is dropped."""
    rng = np.random.default_rng(1)
    normal, anomalous = rng.standard_normal((60, 4)), rng.standard_normal((30, 4))
    anomalous[:, 0] += 2.0  # informative
    anomalous[:, 1] += 0.7  # somewhat
    anomalous[:, 3] -= 1.5  # scores anomalies lower: harmful
    choice = selection.choose(normal, anomalous, combine, ["a", "b", "c", "d"])
    fold = np.max if combine == "max" else np.mean
    truth = np.r_[np.zeros(60), np.ones(30)]
    brute = {
        s: roc_auc_score(truth, np.r_[fold(normal[:, s], 1), fold(anomalous[:, s], 1)])
        for k in range(1, 5)
        for s in itertools.combinations(range(4), k)
    }
    best = max(brute.values())
    assert choice.record["roc_auc"] == pytest.approx(best, abs=1e-12)
    assert brute[tuple(choice.chosen)] == pytest.approx(best, abs=1e-12)
    assert 0 in choice.chosen and 3 not in choice.chosen
    assert choice.record["all_members_roc_auc"] == pytest.approx(brute[(0, 1, 2, 3)])
    singles = [c["roc_auc"] for c in choice.record["candidates"]]
    np.testing.assert_allclose(singles, [brute[(j,)] for j in range(4)])
    assert [c["chosen"] for c in choice.record["candidates"]] == [
        j in choice.chosen for j in range(4)
    ]


def test_on_a_tie_the_smaller_subset_serves_then_the_first() -> None:
    normal = np.zeros((10, 3))
    anomalous = np.ones((10, 3))  # every subset separates perfectly
    assert selection.choose(normal, anomalous, "mean", ["a", "b", "c"]).chosen == [0]
    anomalous[:, 0] = 0.0  # member a separates nothing: b and c tie, b comes first
    assert selection.choose(normal, anomalous, "mean", ["a", "b", "c"]).chosen == [1]


def test_a_member_with_non_finite_scores_is_never_chosen() -> None:
    """A score that overflowed (inf, or NaN from inf − inf) gives no AUC: that subset loses
    even to a poor one, and the record says null rather than NaN."""
    rng = np.random.default_rng(2)
    normal, anomalous = rng.standard_normal((30, 2)), rng.standard_normal((20, 2)) + 0.3
    normal[3, 0] = np.nan
    choice = selection.choose(normal, anomalous, "mean", ["broken", "poor"])
    assert choice.chosen == [1]
    assert choice.record["candidates"][0]["roc_auc"] is None
    assert choice.record["all_members_roc_auc"] is None
    truth = np.r_[np.zeros(30), np.ones(20)]
    poor = roc_auc_score(truth, np.r_[normal[:, 1], anomalous[:, 1]])
    assert choice.record["roc_auc"] == pytest.approx(poor, abs=1e-12)


def test_the_rows_it_chooses_on_are_not_evaluated_nor_fitted() -> None:
    data = load_builtin("breast_cancer")
    parts = split_of(data)
    known = parts.known_anomalies
    assert data.y is not None
    truth = data.y == data.anomaly_label
    assert truth[known].all() and len(known) == truth.sum() - parts.truth.sum()
    assert not set(known) & set(parts.evaluation)


def split_of(data: Dataset) -> Any:
    rows = reduction.load_rows(RunContext(Path("."), Path("."), data), "x")
    return split(rows, EnsembleSpec.model_validate(EnsembleSpec.example).params)


def correlated(seed: int = 0) -> Dataset:
    """Normal rows on a line (five features that move together); anomalies with the same
    marginals but no correlation. ECOD, which sees one feature at a time, cannot tell them
    apart; PCA's reconstruction error can."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((600, 1))
    normal = z + 0.05 * rng.standard_normal((600, 5))
    anomalies = rng.standard_normal((150, 5))
    x = np.concatenate([normal, anomalies]).astype(np.float32)
    y = np.r_[np.zeros(600), np.ones(150)].astype(np.int64)
    return Dataset(x=x, y=y, name="correlated", anomaly_label=1)


def members(**params: Any) -> dict[str, Any]:
    """ECOD and PCA, ranks averaged: a normal row's PCA rank is spread over [0, 1] like an
    anomaly's ECOD rank, so the mean of both mixes the classes that PCA alone separates."""
    detectors = [{"detector": "ecod"}, {"detector": "pca", "params": {"n_components": 1}}]
    return {"params": {"members": detectors, "standardise": "rank", **params}}


def test_a_member_blind_to_the_anomalies_is_left_out(tmp_path: Path) -> None:
    data = correlated()
    outcome, _ = train("ensemble", members(selection="labelled"), tmp_path / "s", data)
    chosen = outcome.result["selection"]
    assert outcome.result["members"] == ["pca"]
    ecod, pca = (c["roc_auc"] for c in chosen["candidates"])
    assert ecod < 0.8 and pca > 0.99 and chosen["anomaly_rows"] == 120  # 150 less 30 evaluated
    assert [m["detector"] for m in outcome.model.calibration["members"]] == ["pca"]
    kept = set(outcome.model.files) - {drift.REFERENCE}
    assert kept and all(k.startswith("m0_") for k in kept)  # the chosen member's files only
    everyone, _ = train("ensemble", members(selection="none"), tmp_path / "n", data)
    assert everyone.result["members"] == ["ecod", "pca"]
    assert everyone.result["selection"] == {"method": "none", "reason": "selection is none"}
    assert outcome.result["roc_auc"] > everyone.result["roc_auc"]
    # What serves is the chosen member alone, standardised as before.
    probe = data.x[::25]
    alone, _ = train(
        "pca", {"params": {"n_components": 1, "validation_split": 0.1}}, tmp_path / "p", data
    )
    own = serve("pca", alone).run("score", probe)["scores"]
    served = serve("ensemble", outcome).run("score", probe)["scores"]
    reference = serve("pca", alone).run("score", data.x[split_of(data).calibration])["scores"]
    expected = [percentileofscore(reference, s, kind="mean") / 100 for s in own]
    np.testing.assert_allclose(served, expected, rtol=1e-9)


def test_without_labelled_anomalies(tmp_path: Path) -> None:
    unlabelled = Dataset(x=correlated().x, name="unlabelled")
    auto, _ = train("ensemble", members(), tmp_path / "a", unlabelled)
    assert auto.result["members"] == ["ecod", "pca"]
    assert auto.result["selection"]["method"] == "none"
    assert "0 labelled anomalies" in auto.result["selection"]["reason"]
    with pytest.raises(JobFailed, match="selection labelled: 0 labelled anomalies") as caught:
        train("ensemble", members(selection="labelled"), tmp_path / "l", unlabelled)
    assert caught.value.code == "invalid_data"
    assert not (tmp_path / "l" / "work" / "members").exists()  # refused before any member trained
