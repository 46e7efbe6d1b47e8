"""Built-in data sets and the readers of uploaded files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.core.datasets import (
    DataError,
    UnknownDataset,
    builtin_names,
    detect_format,
    list_builtins,
    load_builtin,
    load_file,
    summarize,
)

EXPECTED = {
    "digits": [1797, 8, 8, 1],
    "breast_cancer": [569, 30],
    "wine": [178, 13],
    "swiss_roll": [10_000, 2],
    "swiss_roll_3d": [10_000, 3],
    "moons": [10_000, 2],
    "eight_gaussians": [10_000, 2],
}


def test_every_builtin_is_listed_with_its_shape() -> None:
    infos = {info.name: info for info in list_builtins()}
    assert {name: info.shape for name, info in infos.items()} == EXPECTED
    for info in infos.values():
        assert info.ref == f"builtin:{info.name}"
        assert info.description and info.labels and info.dtype == "float32"


@pytest.mark.parametrize("name", builtin_names())
def test_builtins_are_reproducible_and_finite(name: str) -> None:
    first, second = load_builtin(name), load_builtin(f"builtin:{name}")
    np.testing.assert_array_equal(first.x, second.x)
    assert first.y is not None and second.y is not None
    np.testing.assert_array_equal(first.y, second.y)
    assert np.isfinite(first.x).all() and len(first.y) == first.rows
    assert first.x.dtype == np.float32


def test_builtin_label_conventions() -> None:
    cancer = load_builtin("breast_cancer")
    assert cancer.y is not None and int(cancer.y.sum()) == 212  # malignant = 1, the anomaly
    digits = load_builtin("digits")
    assert digits.x.shape[1:] == (8, 8, 1) and digits.x.max() == 16
    assert sorted(np.unique(digits.y).tolist()) == list(range(10))  # type: ignore[arg-type]
    eight = load_builtin("eight_gaussians")
    assert eight.label_type == "class" and set(np.unique(eight.y).tolist()) == set(range(8))  # type: ignore[arg-type]
    radius = np.linalg.norm(eight.x, axis=1)
    assert 2.4 < float(np.median(radius)) < 3.2


def test_the_2d_swiss_roll_is_the_3d_one_seen_from_the_side() -> None:
    flat, roll = load_builtin("swiss_roll"), load_builtin("swiss_roll_3d")
    np.testing.assert_array_equal(flat.x, roll.x[:, [0, 2]])
    assert flat.label_type == "continuous"
    assert np.abs(flat.x).max() < 1.6  # scaled as in Sohl-Dickstein et al. (2015)


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(UnknownDataset, match="builtin:digits"):
        load_builtin("mnist")


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_csv_with_named_columns_and_text_labels(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", b"\xef\xbb\xbf x , y ,kind\n1,2.5,cat\n-3,4e2,dog\n5,6,cat\n")
    data = load_file(path, "csv", label_column="kind", name="pets")
    assert data.x.dtype == np.float64 and data.x.tolist() == [[1, 2.5], [-3, 400], [5, 6]]
    assert data.feature_names == ["x", "y"] and data.name == "pets"
    assert data.y is not None and data.y.tolist() == [0, 1, 0]
    assert data.labels == "column 'kind' (classes: cat=0, dog=1)"


def test_numpy_files(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 255, (4, 28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, x=images, y=np.array([0.5, 1.5, 2.5, 3.0]))
    data = load_file(write(tmp_path, "i.npz", buffer.getvalue()), "npz")
    assert data.x.shape == (4, 28, 28) and data.x.dtype == np.float32  # uint8 -> float32
    assert data.label_type == "continuous"
    vector = io.BytesIO()
    np.save(vector, np.arange(5, dtype=np.int64))
    column = load_file(write(tmp_path, "v.npy", vector.getvalue()), "npy")
    assert column.x.shape == (5, 1) and column.x.dtype == np.float64


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": [0.5, 0.25], "y": [1, 0]}), path)
    data = load_file(path, "parquet", label_column="y")
    assert data.x.tolist() == [[1.0, 0.5], [2.0, 0.25]] and data.y.tolist() == [1, 0]  # type: ignore[union-attr]


def test_pickled_arrays_are_never_loaded(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="no pickles"):
        load_file(write(tmp_path, "p.npy", buffer.getvalue()), "npy")


def test_errors_do_not_show_local_paths(tmp_path: Path) -> None:
    path = write(tmp_path, "secret-spool-name", b"PAR1 not parquet")
    with pytest.raises(DataError) as raised:
        load_file(path, "parquet")
    assert str(tmp_path) not in str(raised.value)


@pytest.mark.parametrize(
    ("filename", "head", "fmt"),
    [
        ("a.CSV", b"x", "csv"),
        ("a.pq", b"", "parquet"),
        ("blob", b"\x93NUMPY\x01\x00", "npy"),
        ("blob", b"PK\x03\x04", "npz"),
        ("upload", b"PAR1", "parquet"),
    ],
)
def test_detect_format(filename: str, head: bytes, fmt: str) -> None:
    assert detect_format(filename, head) == fmt


def test_detect_format_refuses_others() -> None:
    with pytest.raises(DataError, match=r"unsupported file format '\.json'"):
        detect_format("a.json", b"{}")


def test_summary_caps_features_and_previews_rows() -> None:
    data = load_builtin("digits")
    summary = summarize(data, max_features=10, preview_rows=3)
    assert summary["features_total"] == 64 and summary["features_shown"] == 10
    assert len(summary["features"]) == 10 and len(summary["preview"]["x"][0]) == 10
    assert len(summary["preview"]["x"]) == 3 and summary["preview"]["y"] == [0, 1, 2]
    first = data.x.reshape(data.rows, -1)[:, 2]
    assert summary["features"][2]["mean"] == pytest.approx(float(first.mean()), rel=1e-6)
    assert summary["labels"]["counts"]["0"] == 178
    continuous = summarize(load_builtin("swiss_roll"))
    assert 4.5 < continuous["labels"]["min"] < continuous["labels"]["max"] < 14.5
