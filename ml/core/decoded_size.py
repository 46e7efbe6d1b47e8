"""What an uploaded file decodes to, in bytes, known before any of its data is inflated.

NumPy files: their headers' shapes and dtypes (and an .npz's zip directory). Parquet: rows x
columns x 8 (float64) from the footer's metadata. CSV: every value takes at least one character
and a separator, so its float64 matrix is at most 4 bytes per byte of text; a newline count and the
header's columns usually bound it much tighter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ml.core import npfiles
from ml.core.dataset_types import DataError

FLOAT_BYTES = 8
CHUNK = 8 << 20


def _parquet_bytes(path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}") from exc
    return int(metadata.num_rows) * int(metadata.num_columns) * FLOAT_BYTES


def _csv_bytes(path: Path) -> int:
    """At most (lines x header columns) values; never more than one value per two bytes."""
    size = Path(path).stat().st_size
    lines, columns, in_header = 1, 1, True
    with Path(path).open("rb") as handle:
        while chunk := handle.read(CHUNK):
            if in_header:
                end = chunk.find(b"\n")
                columns += chunk[: None if end < 0 else end].count(b",")
                in_header = end < 0
            lines += chunk.count(b"\n")
    # Quoted commas in the header or quoted newlines only make this larger: still a bound.
    return min(lines * columns, (size + 1) // 2) * FLOAT_BYTES


SIZERS: dict[str, Callable[[Path], int]] = {
    "npy": npfiles.npy_bytes,
    "npz": npfiles.npz_bytes,
    "parquet": _parquet_bytes,
    "csv": _csv_bytes,
}


def decoded_bytes(path: Path, fmt: str) -> int:
    """The bytes of the arrays `path` decodes to (an upper bound for CSV); DataError when its
    headers cannot be read."""
    if fmt not in SIZERS:
        raise DataError(f"unsupported format {fmt!r}")
    return SIZERS[fmt](Path(path))
