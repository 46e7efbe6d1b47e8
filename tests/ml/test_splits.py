"""Training / validation / evaluation splits, reproducible from the seed."""

from __future__ import annotations

import numpy as np
import pytest

from ml.core.splits import split_indices, stratified_split_indices


def test_parts_are_disjoint_and_cover_every_row() -> None:
    split = split_indices(1000, validation_split=0.1, evaluation_split=0.2, seed=3)
    assert (len(split.train), len(split.validation), len(split.evaluation)) == (700, 100, 200)
    everything = np.concatenate([split.train, split.validation, split.evaluation])
    assert sorted(everything.tolist()) == list(range(1000))
    for part in (split.train, split.validation, split.evaluation):
        assert (np.diff(part) > 0).all()  # sorted, no repeats


def test_the_same_seed_gives_the_same_split() -> None:
    a, b = split_indices(500, 0.2, 0.1, seed=7), split_indices(500, 0.2, 0.1, seed=7)
    for x, y in zip(
        (a.train, a.validation, a.evaluation), (b.train, b.validation, b.evaluation), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    other = split_indices(500, 0.2, 0.1, seed=8)
    assert not np.array_equal(a.validation, other.validation)


def test_the_evaluation_rows_do_not_depend_on_validation_split() -> None:
    few = split_indices(300, validation_split=0.05, evaluation_split=0.2, seed=1)
    many = split_indices(300, validation_split=0.3, evaluation_split=0.2, seed=1)
    np.testing.assert_array_equal(few.evaluation, many.evaluation)


def test_no_split_and_tiny_sets() -> None:
    whole = split_indices(5)
    assert whole.train.tolist() == [0, 1, 2, 3, 4] and len(whole.validation) == 0
    small = split_indices(3, validation_split=0.1)
    assert len(small.validation) == 1 and len(small.train) == 2  # a requested split gets a row


@pytest.mark.parametrize(
    ("n", "validation", "evaluation", "message"),
    [
        (10, 1.0, 0.0, "validation_split must be in"),
        (10, 0.6, 0.5, "must leave rows to train on"),
        (0, 0.1, 0.0, "zero rows"),
        (2, 0.5, 0.4, "leave none to train on"),
    ],
)
def test_impossible_splits_are_refused(
    n: int, validation: float, evaluation: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        split_indices(n, validation, evaluation)


def test_stratified_keeps_class_shares() -> None:
    y = np.array([0] * 900 + [1] * 100)
    split = stratified_split_indices(y, validation_split=0.1, evaluation_split=0.2, seed=0)
    assert int(y[split.evaluation].sum()) == 20 and len(split.evaluation) == 200
    assert int(y[split.validation].sum()) == 10 and len(split.validation) == 100
    everything = np.concatenate([split.train, split.validation, split.evaluation])
    assert sorted(everything.tolist()) == list(range(1000))
    again = stratified_split_indices(y, validation_split=0.1, evaluation_split=0.2, seed=0)
    np.testing.assert_array_equal(split.evaluation, again.evaluation)
