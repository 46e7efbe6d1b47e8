"""The drift tests' statistics: the MMD against a NumPy reference written out directly, its
permutation p-values uniform without drift, its power on a small mean shift, the per-feature
Kolmogorov–Smirnov tests' false discoveries, and the reference sample a model keeps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ml.anomaly import drift
from ml.core.preprocessing import Scaler


def numpy_mmd2(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The unbiased MMD² of x and y and σ, from the definitions: the pooled rows' squared
    distances, σ² = half their median over distinct pairs (the lower median, as Alibi Detect's
    `sigma_median`), k = exp(−d² / 2σ²), and the three means without the diagonals."""
    z = np.concatenate([y, x]).astype(np.float64)
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=-1)
    pairs = np.sort(d2[np.triu_indices(len(z), k=1)])
    sigma2 = pairs[(len(pairs) - 1) // 2] / 2.0
    k = np.exp(-d2 / (2.0 * sigma2))
    m, n = len(y), len(x)
    k_yy, k_xx, k_xy = k[:m, :m], k[m:, m:], k[m:, :m]
    xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(xx + yy - 2.0 * k_xy.mean()), math.sqrt(sigma2)


@pytest.mark.parametrize(
    ("n", "m", "d", "shift"),
    [(40, 60, 1, 0.0), (100, 70, 5, 0.3), (600, 300, 3, 1.0)],  # 600 + 300: several blocks
)
def test_mmd_matches_a_numpy_reference(n: int, m: int, d: int, shift: float) -> None:
    rng = np.random.default_rng(n + m + d)
    x, y = rng.standard_normal((n, d)) + shift, rng.standard_normal((m, d))
    expected, sigma = numpy_mmd2(x, y)
    result = drift.mmd_test(x, y, permutations=10, seed=0)
    assert abs(result.statistic - expected) < 1e-6
    assert abs(result.bandwidth - sigma) < 1e-6 * sigma


def test_every_permutation_is_the_mmd_of_its_labelling() -> None:
    """The permutations' statistics (one pass over the kernel matrix) are each the MMD² of the
    rows their labels split the pooled sample into."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((30, 4)) + 0.5, rng.standard_normal((50, 4))
    pooled = np.concatenate([y, x])
    d2 = drift.squared_distances(pooled)
    sigma = drift.median_bandwidth(d2)
    labels = drift.permutation_labels(len(x), len(y), 5, seed=1)
    stats_ = drift.mmd2_of_labels(d2, labels, 1.0 / (2.0 * sigma**2))
    for column in range(labels.shape[1]):
        incoming = labels[:, column] == 1
        # σ is the pooled sample's: the same whichever rows are called incoming
        expected, _ = numpy_mmd2(pooled[incoming], pooled[~incoming])
        assert abs(stats_[column] - expected) < 1e-6


def test_without_drift_the_p_values_are_uniform() -> None:
    """200 tests of two samples from one distribution: their MMD p-values pass a KS test
    against the uniform at the 1% level, and the per-feature tests flag a feature (any, after
    the BH correction) no more often than α allows.

    A permutation p-value lives on the grid k / (B + 1); without drift P(p ≤ k/(B + 1)) =
    k/(B + 1) exactly, so p − U/(B + 1), U uniform on [0, 1), is uniform on [0, 1): the KS test
    is of that (the grid itself would fail a continuous test for no fault of the MMD's)."""
    rng = np.random.default_rng(20261205)
    repetitions, permutations, alpha = 200, 200, 0.05
    p_values, any_feature = [], 0
    for i in range(repetitions):
        x, y = rng.standard_normal((60, 10)), rng.standard_normal((100, 10))
        answer = drift.drift_test(x, y, permutations=permutations, alpha=alpha, seed=i)
        p_values.append(answer["p_value"])
        any_feature += answer["features_drifted"] > 0
    jittered = np.asarray(p_values) - rng.uniform(size=repetitions) / (permutations + 1)
    uniformity = stats.kstest(jittered, "uniform")
    assert uniformity.pvalue > 0.01, uniformity
    # BH controls the family-wise error under no drift at all: P(any flagged) ≤ α.
    most = stats.binom.ppf(0.99, repetitions, alpha)
    assert any_feature <= most, (any_feature, most)


def test_a_half_sd_shift_in_one_feature_of_ten_is_detected() -> None:
    """500 incoming rows with feature 3 shifted by 0.5 sd, against a reference of 1000 rows:
    the MMD test at α = 0.05 detects it with power ≥ 0.9. The test fails when the detections
    are in the lowest 1% of a Binomial(R, 0.9), i.e. inconsistent with power ≥ 0.9; the power
    estimate's standard error is √(p̂(1 − p̂)/R) (≤ 0.05 for R = 40), shown on failure."""
    rng = np.random.default_rng(7)
    repetitions = 40
    detected = 0
    for i in range(repetitions):
        y = rng.standard_normal((drift.REFERENCE_ROWS, 10))
        x = rng.standard_normal((500, 10))
        x[:, 3] += 0.5
        answer = drift.drift_test(x, y, alpha=0.05, seed=i)
        detected += answer["drift"]
    power = detected / repetitions
    se = math.sqrt(power * (1 - power) / repetitions)
    assert detected >= stats.binom.ppf(0.01, repetitions, 0.9), f"power {power:.3f} ± {se:.3f}"


def test_the_shifted_feature_is_the_one_flagged() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((500, 10)), rng.standard_normal((1000, 10))
    x[:, 3] += 0.5
    answer = drift.drift_test(x, y, permutations=20)
    assert [f["feature"] for f in answer["features"] if f["drift"]] == [3]
    assert answer["features_drifted"] == 1 and len(answer["features"]) == 10


def test_benjamini_hochberg_matches_scipy() -> None:
    p = np.random.default_rng(5).uniform(size=50) ** 3
    np.testing.assert_allclose(drift.benjamini_hochberg(p), stats.false_discovery_control(p))


def test_the_feature_tests_are_scipys_in_blocks_of_features() -> None:
    rng = np.random.default_rng(8)
    width = 2 * drift.FEATURE_BLOCK + 3
    x = rng.standard_normal((300, width)).astype(np.float32)
    y = rng.standard_normal((200, width))
    x[:, width - 1] += 1.0
    features = drift.feature_tests(x, y, alpha=0.05)
    whole = stats.ks_2samp(x, y, axis=0)
    np.testing.assert_allclose([f["statistic"] for f in features], whole.statistic)
    np.testing.assert_allclose([f["p_value"] for f in features], whole.pvalue)
    adjusted = stats.false_discovery_control(whole.pvalue)
    np.testing.assert_allclose([f["p_value_adjusted"] for f in features], adjusted)
    assert [f["drift"] for f in features] == list(adjusted <= 0.05)
    assert features[width - 1]["drift"]


def test_large_batches_are_subsampled_for_the_mmd_only() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((drift.MMD_ROWS + 500, 2)), rng.standard_normal((50, 2))
    answer = drift.drift_test(x, y, permutations=5)
    assert answer["rows"] == drift.MMD_ROWS + 500
    assert answer["mmd_rows"] == drift.MMD_ROWS and answer["reference_rows"] == 50
    # The KS tests use every row: feature 0's statistic is the one of all the rows.
    whole = stats.ks_2samp(x[:, 0], y[:, 0])
    assert answer["features"][0]["statistic"] == pytest.approx(whole.statistic)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"permutations": 0}, "permutations"),
        ({"permutations": drift.MAX_PERMUTATIONS + 1}, "permutations"),
        ({"alpha": 1.0}, "alpha"),
    ],
)
def test_out_of_range_options_are_refused(options: dict[str, float], message: str) -> None:
    rows = np.zeros((5, 2))
    with pytest.raises(ValueError, match=message):
        drift.drift_test(rows, rows, **options)  # type: ignore[arg-type]


def test_labellings_as_extreme_as_the_observed_one_count_despite_rounding() -> None:
    """Three points, in the same proportions on both sides: every permutation's MMD² is at
    least the observed one, most of them equal to it but summed in another order."""
    points = np.array([[0.0, 3.0], [1.0, 0.5], [2.0, 1.0]])
    y, x = np.tile(points, (10, 1)), np.tile(points, (7, 1))
    assert drift.mmd_test(x, y, permutations=200, seed=0).p_value == 1.0


def test_identical_rows_answer_no_drift() -> None:
    """Every pooled pair coincides: no bandwidth to take from them, and no evidence of drift."""
    rows = np.ones((20, 3))
    answer = drift.drift_test(rows, rows, permutations=10)
    assert answer["statistic"] == pytest.approx(0.0, abs=1e-12)
    assert answer["p_value"] == 1.0 and not answer["drift"]


def test_the_reference_sample_is_bounded_seeded_and_flat(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).standard_normal((2500, 4, 2))
    first = drift.reference_sample(rows, seed=3)
    assert first.shape == (drift.REFERENCE_ROWS, 8) and first.dtype == np.float32
    np.testing.assert_array_equal(first, drift.reference_sample(rows, seed=3))
    assert not np.array_equal(first, drift.reference_sample(rows, seed=4))
    few = drift.reference_sample(rows[:10], seed=3)
    np.testing.assert_array_equal(few, rows[:10].reshape(10, 8).astype(np.float32))


def test_the_servable_scales_raw_rows_as_the_model_does(tmp_path: Path) -> None:
    """Raw rows go through the models row's scaler before they meet the (scaled) sample: rows
    from the training distribution, in raw units, show no shift from the reference."""
    rng = np.random.default_rng(9)
    raw = rng.normal(50.0, 10.0, (400, 3))
    scaler = Scaler(method="standard").fit(raw)
    from ml.core.reporting import ModelOutcome

    outcome = ModelOutcome(files={}, input_shape=[3], capabilities=["score"])
    drift.keep_reference(outcome, scaler.transform(raw), seed=0, folder=tmp_path)
    meta = {"input_shape": [3], "preprocessing": scaler.to_dict()}
    servable = drift.DriftServable(outcome.files, meta)
    fresh = rng.normal(50.0, 10.0, (200, 3)).astype(np.float32)
    same = servable.run("drift", fresh, permutations=50)
    shifted = servable.run("drift", fresh + 5.0, permutations=50)
    assert same["statistic"] < 0.01 < shifted["statistic"]
    assert shifted["drift"] and shifted["features_drifted"] == 3
