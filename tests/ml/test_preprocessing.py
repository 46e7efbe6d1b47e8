"""The input scaler: fit on training rows, invert, serialise, and its log-Jacobian."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from ml.core.preprocessing import NotFitted, Scaler
from ml.core.spec import JobSpec, Preprocessing, preprocessing_field


@pytest.fixture
def table() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.normal([10.0, -3.0, 0.0], [2.0, 0.5, 5.0], size=(500, 3)).astype(np.float32)


def test_minmax_maps_training_rows_to_the_unit_box(table: np.ndarray) -> None:
    scaler = Scaler("minmax").fit(table)
    z = scaler.transform(table)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.min(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(z.max(axis=0), 1, atol=1e-6)
    np.testing.assert_allclose(scaler.inverse_transform(z), table, rtol=1e-5, atol=1e-5)


def test_standard_gives_zero_mean_unit_variance(table: np.ndarray) -> None:
    z = Scaler("standard").fit(table).transform(table.astype(np.float64))
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-12)


def test_fitted_on_the_training_split_only(table: np.ndarray) -> None:
    train, held_out = table[:400], table[400:] + 100.0
    scaler = Scaler("minmax").fit(train)
    assert scaler.transform(held_out).min() > 1  # held-out rows did not widen the range


def test_none_and_constant_features() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    assert Scaler("none").fit(x).transform(x) is not None
    np.testing.assert_array_equal(Scaler("none").fit(x).transform(x), x)
    z = Scaler("standard").fit(x).transform(x)
    assert np.isfinite(z).all() and (z[:, 1] == 0).all()  # constant column: scale 1
    np.testing.assert_array_equal(Scaler.from_dict({}).transform(x), x)  # no preprocessing


def test_images_share_one_scale_unless_asked(table: np.ndarray) -> None:
    images = np.random.default_rng(2).uniform(0, 16, size=(50, 8, 8, 1))
    shared = Scaler("minmax").fit(images)
    assert shared.per_feature is False and shared.scale is not None and shared.scale.shape == ()
    per_pixel = Scaler("minmax", per_feature=True).fit(images)
    assert per_pixel.scale is not None and per_pixel.scale.shape == (8, 8, 1)
    assert Scaler("minmax").fit(table).per_feature is True


def test_round_trips_through_json(table: np.ndarray) -> None:
    for scaler in (Scaler("standard").fit(table), Scaler("minmax").fit(table.reshape(-1, 3, 1))):
        restored = Scaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
        sample = table[:5].reshape((5, *scaler.feature_shape))  # type: ignore[misc]
        np.testing.assert_array_equal(restored.transform(sample), scaler.transform(sample))
        assert restored.log_abs_det_jacobian() == scaler.log_abs_det_jacobian()


def test_log_abs_det_jacobian_converts_densities(table: np.ndarray) -> None:
    """-log p_x(x) = -log p_z(z) + Σ ln|scale_i|, checked on a Gaussian."""
    scaler = Scaler("standard").fit(table)
    assert scaler.log_abs_det_jacobian() == pytest.approx(
        float(np.log(table.astype(np.float64).std(axis=0)).sum())
    )
    x = table[:3].astype(np.float64)
    mean, std = scaler.offset, scaler.scale
    nll_x = 0.5 * (((x - mean) / std) ** 2 + np.log(2 * np.pi * std**2)).sum(axis=1)
    z = scaler.transform(x)
    nll_z = 0.5 * (z**2 + np.log(2 * np.pi)).sum(axis=1)
    np.testing.assert_allclose(nll_x, nll_z + scaler.log_abs_det_jacobian())
    images = Scaler("minmax").fit(np.array([[[0.0, 16.0]], [[8.0, 4.0]]]))
    assert images.log_abs_det_jacobian() == pytest.approx(2 * np.log(16.0))
    assert Scaler("none").log_abs_det_jacobian() == 0.0


def test_misuse_is_explained(table: np.ndarray) -> None:
    with pytest.raises(NotFitted, match="fit"):
        Scaler("standard").transform(table)
    with pytest.raises(ValueError, match=r"do not match the fitted shape \[3\]"):
        Scaler("standard").fit(table).transform(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown scale"):
        Scaler("robust")  # type: ignore[arg-type]


def test_spec_field_with_a_kind_default() -> None:
    class Spec(JobSpec):
        preprocessing: Preprocessing = preprocessing_field("minmax")

    assert Spec(kind="x").preprocessing.scale == "minmax"
    assert Spec(kind="x", preprocessing={"scale": "none"}).preprocessing.scale == "none"  # type: ignore[arg-type]
    assert Preprocessing().scale == "standard"
    with pytest.raises(ValidationError):
        Spec(kind="x", preprocessing={"scale": "log"})  # type: ignore[arg-type]
    assert Scaler.from_spec(Preprocessing(scale="minmax", per_feature=True)).per_feature is True
