"""Readers for uploaded data files: CSV, NPY, NPZ and Parquet, into a :class:`Dataset`.

Every problem is a :class:`DataError` whose message says what to fix. NumPy files are read by
`ml.core.npfiles`, which never unpickles: an upload can never run code. What a file decodes to
is known beforehand from its headers (`ml.core.decoded_size`).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np

from ml.core import npfiles
from ml.core.dataset_types import DataError, Dataset, LabelType

FORMATS = ("csv", "npy", "npz", "parquet")
EXTENSIONS = {".csv": "csv", ".npy": "npy", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}
MAGIC = ((b"\x93NUMPY", "npy"), (b"PK\x03\x04", "npz"), (b"PAR1", "parquet"))
SUPPORTED = "CSV (.csv, with a header row), NumPy (.npy, or .npz with arrays x and y) or Parquet"


def detect_format(filename: str | None, head: bytes) -> str:
    """The format from the file's extension, else from its first bytes."""
    suffix = Path(filename or "").suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    for magic, fmt in MAGIC:
        if head.startswith(magic):
            return fmt
    shown = f"'{suffix}'" if suffix else "(no extension)"
    raise DataError(f"unsupported file format {shown}; upload {SUPPORTED}")


def load_file(path: Path, fmt: str, *, label_column: str | None = None, name: str = "") -> Dataset:
    """Read and check an uploaded file: numeric, finite, rectangular, at least one row."""
    path = Path(path)
    try:
        return _load(path, fmt, label_column, name)
    except DataError as exc:  # the local spool path means nothing to the uploader
        raise DataError(str(exc).replace(str(path), "the file")) from exc


def _load(path: Path, fmt: str, label_column: str | None, name: str) -> Dataset:
    if fmt not in FORMATS:
        raise DataError(f"unsupported format {fmt!r}; upload {SUPPORTED}")
    if path.stat().st_size == 0:
        raise DataError("the file is empty")
    if label_column and fmt in ("npy", "npz"):
        raise DataError(
            "label_column applies to CSV and Parquet only; in an NPZ file put the labels in an "
            "array named y"
        )
    reader = {"csv": _read_csv, "npy": _read_npy, "npz": _read_npz, "parquet": _read_parquet}[fmt]
    data = reader(path, label_column)
    data.name = name
    return data


# --- arrays ------------------------------------------------------------------------------------


def as_float(x: np.ndarray, what: str = "the data") -> np.ndarray:
    """float32/float64 as they are; small integers and bools to float32, others to float64.
    Either byte order: the result is in the machine's."""
    x = npfiles.native(x)
    if x.dtype in (np.float32, np.float64):
        return x
    if x.dtype.kind == "b" or (x.dtype.kind in "iuf" and x.dtype.itemsize <= 2):
        return x.astype(np.float32)
    if x.dtype.kind in "iu":
        return x.astype(np.float64)
    raise DataError(
        f"{what} has dtype {x.dtype}; only real numbers (integers, floats, bools) can be used"
    )


def _check_finite(x: np.ndarray, names: list[str] | None = None) -> None:
    flat = x.reshape(x.shape[0], -1)
    block = 65_536
    if all(np.isfinite(flat[i : i + block]).all() for i in range(0, len(flat), block)):
        return
    bad = ~np.isfinite(flat)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        where = f"column {names[column]!r}" if names else f"feature {column}"
        raise DataError(
            f"{where} has a missing or non-finite value (empty, NaN or inf) in data row "
            f"{row + 1}, and {int(bad.sum())} such values in all; remove or fill them"
        )


def _labels(y: np.ndarray, rows: int) -> tuple[np.ndarray, LabelType]:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != rows:
        raise DataError(
            f"the labels y must be one value per row ({rows}); got shape {list(y.shape)}"
        )
    if y.dtype.kind not in "biuf":
        raise DataError(f"the labels y have dtype {y.dtype}; use integers or floats")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError("the labels y contain NaN or inf; remove or fill them")
        if np.array_equal(y, np.round(y)):
            return y.astype(np.int64), "class"
        return y.astype(np.float64), "continuous"
    return y.astype(np.int64), "class"


def _dataset(
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    description: str,
    labels: str | None = None,
    names: list[str] | None = None,
) -> Dataset:
    if x.ndim == 0:
        raise DataError("the data is a single number; upload an array of rows")
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if x.shape[0] == 0:
        raise DataError("the data has no rows")
    if 0 in x.shape[1:]:
        raise DataError(f"the data's rows are empty (shape {list(x.shape)})")
    x = as_float(x)
    _check_finite(x, names)
    label_type: LabelType | None = None
    if y is not None:
        y, label_type = _labels(y, x.shape[0])
        labels = labels or "the uploaded labels"
    return Dataset(
        x=x,
        y=y,
        description=description,
        labels=labels if y is not None else None,
        label_type=label_type,
        feature_names=names,
    )


def _read_npy(path: Path, _: str | None) -> Dataset:
    return _dataset(npfiles.read_npy(path), None, description="uploaded NumPy array")


def _read_npz(path: Path, _: str | None) -> Dataset:
    x, y = npfiles.read_npz(path)
    return _dataset(x, y, description="uploaded NumPy arrays")


# --- tables ------------------------------------------------------------------------------------


def _encode_labels(values: np.ndarray, column: str) -> tuple[np.ndarray, str]:
    """Text labels as integer codes in sorted order; the meaning names each code."""
    classes, codes = np.unique(values.astype(str), return_inverse=True)
    if len(classes) > 1000:
        raise DataError(
            f"label column {column!r} is text with {len(classes)} distinct values; labels must "
            "be numbers or at most 1000 classes"
        )
    mapping = ", ".join(f"{c}={i}" for i, c in enumerate(classes))
    return codes.astype(np.int64), f"column {column!r} (classes: {mapping})"


def _check_columns(names: list[str], label_column: str | None, what: str) -> list[str]:
    """The feature columns' names, after checking the header as a whole."""
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"duplicate column names: {', '.join(dupes)}; give each column its own")
    if label_column is not None and label_column not in names:
        raise DataError(
            f"label column {label_column!r} is not in the {what}; its columns are: "
            f"{', '.join(names)}"
        )
    features = [n for n in names if n != label_column]
    if not features:
        raise DataError(f"the {what} has no feature columns besides the label column")
    return features


def _label_values(values: Any, label_column: str) -> tuple[np.ndarray, str]:
    """A label column (Arrow) as numbers; text as sorted class codes."""
    import pyarrow as pa

    if values.null_count:
        raise DataError(
            f"label column {label_column!r} has empty values (or NA, null, NaN); fill or drop them"
        )
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            values = values.cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _encode_labels(values.to_numpy(zero_copy_only=False), label_column)
    raw = values.to_numpy(zero_copy_only=False)
    if raw.dtype.kind in "biuf":
        return raw, f"column {label_column!r}"
    return _encode_labels(raw, label_column)


def _from_table(holder: list[Any], label_column: str | None, what: str) -> Dataset:
    """Columns to a float64 matrix. `holder` holds the only reference to the table, and is
    emptied, so that each column can be freed once copied."""
    import pyarrow as pa

    table = holder.pop()
    assert isinstance(table, pa.Table)
    features = _check_columns([str(n) for n in table.column_names], label_column, what)
    if table.num_rows == 0:
        raise DataError(f"the {what} has no rows")
    x = np.empty((table.num_rows, len(features)), dtype=np.float64)
    for j, column in enumerate(features):
        values = table.column(column)
        kind = values.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            if pa.types.is_null(kind):
                raise DataError(f"column {column!r} is empty; remove it")
            sample = next((v for v in values.to_pylist() if v is not None), None)
            raise DataError(
                f"column {column!r} is not numeric ({kind}, e.g. {sample!r}); every feature "
                "column must hold numbers: encode categories as numbers or drop the column"
                + (", or name it as label_column" if label_column is None else "")
            )
        x[:, j] = values.to_numpy()
        # Let each column go once copied, so the table and x are not both whole in memory.
        table = table.drop_columns([column])
        del values
    y, labels = None, None
    if label_column is not None:
        y, labels = _label_values(table.column(label_column), label_column)
    return _dataset(x, y, description=f"uploaded {what}", labels=labels, names=features)


def _first_record(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return next(csv.reader(handle), [])
    except UnicodeDecodeError as exc:
        raise DataError("the CSV is not UTF-8 text") from exc


def _looks_numeric(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _locate(path: Path, column: int | None = None, value: str | None = None) -> str:
    """Where a CSV problem is, found by re-reading it (only on the error path)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        width = len(next(reader, []))
        for row in reader:
            if column is None and row and len(row) != width:
                return (
                    f"line {reader.line_num} has {len(row)} values; the header has {width} columns"
                )
            if column is not None and len(row) > column and row[column].strip() == value:
                return f"line {reader.line_num}"
    return "the file"


def _csv_error(exc: Exception, path: Path, header: list[str]) -> DataError:
    message = str(exc)
    if "Expected" in message and "columns" in message:
        return DataError(f"ragged rows: {_locate(path)}; every row needs a value per column")
    converted = re.search(r"column #(\d+): .*invalid value '(.*)'", message)
    if converted:
        index, value = int(converted.group(1)), converted.group(2)
        column = header[index] if index < len(header) else f"#{index}"
        return DataError(
            f"column {column!r} is not numeric: {value!r} at {_locate(path, index, value)}; "
            "every feature column must hold numbers (encode categories as numbers, drop the "
            "column, or name it as label_column)"
        )
    return DataError(f"the CSV could not be read: {message}")


def _read_csv(path: Path, label_column: str | None) -> Dataset:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    raw_header = _first_record(path)
    header = [cell.strip() for cell in raw_header]
    if not any(header):
        raise DataError("the CSV's first line is empty; it must be a header of column names")
    if all(_looks_numeric(cell) for cell in header):
        raise DataError(
            "the CSV's first line looks like data, not a header; add a header row of column "
            f"names (e.g. {','.join(f'f{i}' for i in range(min(len(header), 3)))},...)"
        )
    _check_columns(header, label_column, "CSV")
    # Features are parsed as float64 straight away (a text cell is an error naming it); labels
    # as text, so that class names work and an empty label is caught.
    types = {
        raw: pa.string() if raw.strip() == label_column else pa.float64() for raw in raw_header
    }
    try:
        table = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(encoding="utf8"),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        raise _csv_error(exc, path, header) from exc
    except UnicodeDecodeError as exc:
        raise DataError("the CSV is not UTF-8 text") from exc
    if table.num_rows == 0:
        raise DataError("the CSV has a header but no data rows")
    holder = [table.rename_columns(header)]
    del table
    return _from_table(holder, label_column, "CSV")


def _read_parquet(path: Path, label_column: str | None) -> Dataset:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}") from exc
    for name in table.column_names:
        missing = table.column(name).null_count
        if name != label_column and missing:
            raise DataError(f"column {name!r} has {missing} missing values; remove or fill them")
    holder = [table]
    del table
    return _from_table(holder, label_column, "Parquet table")
