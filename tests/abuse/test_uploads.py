"""Data set uploads cannot take the API down: what a file decodes to is known from its headers
and checked before it inflates, and decoding happens in a child process with a memory limit.

The two bombs an outside tester sent: a 2 MB .npz of zeros decoding to 2 GB (the API went from
1.0 to 3.05 GB), and a 0.9 MB zstd Parquet file of 1e8 x 2 constants (peak 5.2 GB, 3.2 GB held).
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from service import decoding
from service.config import Settings, get_settings
from tests.abuse.helpers import assert_error, assert_still_serving, peak_rss, reset_peak, rss

MB = 1 << 20
ANSWER_BUDGET_S = 10.0  # a child's start and a header read, on a shared and noisy machine


def npz_of_zeros(path: Path, rows: int, columns: int, *, name: str = "x.npy") -> Path:
    """What np.savez_compressed(x=np.zeros((rows, columns))) writes, streamed: the test never
    holds the array."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (rows, columns)}
    chunk, left = bytes(8 * MB), rows * columns * 8
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open(name, "w", force_zip64=True) as member,
    ):
        np.lib.format.write_array_header_1_0(member, header)
        while left:
            member.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    return path


def parquet_of_constants(path: Path, rows: int, block: int = 1_000_000) -> Path:
    """A zstd Parquet file of `rows` x 2 constants, written a row group at a time."""
    part = pa.table({"a": np.zeros(block), "b": np.ones(block)})
    with pq.ParquetWriter(path, part.schema, compression="zstd") as writer:
        for _ in range(rows // block):
            writer.write_table(part, row_group_size=block)
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "npz": npz_of_zeros(folder / "zeros.npz", 2_500_000, 100),  # 2.0e9 bytes decoded
        "parquet": parquet_of_constants(folder / "big.parquet", 100_000_000),  # 1.6e9
    }


def post(client: TestClient, path: Path, **fields: str) -> Any:
    with path.open("rb") as handle:
        return client.post("/v1/datasets", files={"file": (path.name, handle)}, data=fields)


def post_bytes(client: TestClient, filename: str, content: bytes) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, content)})


def report(what: str, before: int, elapsed: float) -> None:
    """The figures, for `pytest -s`."""
    print(
        f"\n{what}: answered in {elapsed:.2f} s; API process {before / MB:.0f} MB before, "
        f"peak +{(peak_rss() - before) / MB:.0f} MB, after {(rss() - before) / MB:+.0f} MB"
    )


def warm(client: TestClient) -> None:
    """One small upload first: what the first one costs once (imports, threads) is not a leak."""
    assert post_bytes(client, "warm.csv", b"a,b\n1,2\n3,4\n").status_code == 201


@pytest.mark.parametrize(("fmt", "decoded"), [("npz", 2_000_000_000), ("parquet", 1_600_000_000)])
def test_a_bomb_is_refused_before_it_inflates(
    client: TestClient, settings: Settings, bombs: dict[str, Path], fmt: str, decoded: int
) -> None:
    assert bombs[fmt].stat().st_size < 10 * MB
    warm(client)
    before = rss()
    reset_peak()
    started = time.perf_counter()
    response = post(client, bombs[fmt])
    elapsed = time.perf_counter() - started
    report(fmt, before, elapsed)
    error = assert_error(response, 413, "payload_too_large")
    assert f"{decoded} bytes" in error["message"] and f"{1 << 30} bytes" in error["message"]
    assert error["details"] == {"decoded_bytes": decoded, "max_dataset_bytes": 1 << 30}
    assert elapsed < ANSWER_BUDGET_S
    assert peak_rss() - before < 100 * MB  # of 1.6-2 GB decoded
    assert rss() < before * 1.1
    assert_still_serving(client)
    assert list((settings.data_dir / "tmp").glob("*")) == []


def test_a_big_allowed_upload_leaves_the_api_as_it_was(client: TestClient, tmp_path: Path) -> None:
    path = npz_of_zeros(tmp_path / "allowed.npz", 400_000, 100)  # 320 MB decoded
    warm(client)
    before = rss()
    reset_peak()
    started = time.perf_counter()
    response = post(client, path)
    report("allowed .npz, 320 MB decoded", before, time.perf_counter() - started)
    assert response.status_code == 201, response.text
    assert response.json()["shape"] == [400_000, 100]
    assert peak_rss() - before < 100 * MB
    assert rss() < before * 1.1
    assert_still_serving(client)


@pytest.fixture
def tiny_limit(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    from service.main import create_app

    monkeypatch.setenv("THERMOML_MAX_DATASET_BYTES", "1000")
    get_settings.cache_clear()
    with TestClient(create_app(get_settings(), reconcile=False)) as client:
        yield client


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _parquet(rows: int) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"a": np.zeros(rows)}), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("filename", "content", "decoded"),
    [
        ("d.npy", _npy(np.zeros(200)), 1600),
        ("d.npz", _npz(x=np.zeros(150), y=np.zeros(150)), 2400),
        ("d.parquet", _parquet(200), 1600),
        ("d.csv", b"a\n" + b"10\n" * 200, 8 * 202),  # lines x header columns x 8
        ("d.csv", b"a,b\n" + b"1,2\n" * 100, 8 * 202),  # a value per two bytes at most
    ],
)
def test_every_format_is_sized_from_its_headers(
    tiny_limit: TestClient, filename: str, content: bytes, decoded: int
) -> None:
    error = assert_error(post_bytes(tiny_limit, filename, content), 413, "payload_too_large")
    assert f"decodes to {decoded} bytes" in error["message"]
    assert "1000 bytes (THERMOML_MAX_DATASET_BYTES)" in error["message"]
    assert post_bytes(tiny_limit, "small.csv", b"a\n1\n2\n").status_code == 201


def _member(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, content)
    return buffer.getvalue()


def _lying_directory(content: bytes, size: int) -> bytes:
    """`content` (a zip of one member) whose headers say the member inflates to `size`."""
    data = bytearray(content)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)
        struct.pack_into("<I", data, at + offset, size)
    return bytes(data)


@pytest.mark.parametrize("directory", ["honest", "lying"])
def test_a_member_holding_more_than_its_header_says_is_not_inflated(
    client: TestClient, directory: str
) -> None:
    """The .npy header says 80 bytes, the member holds 200 MB; its zip entry says so, or (lying
    too) says 80 bytes: either way no more than the header's bytes are inflated."""
    small = _npy(np.zeros(10))
    content = _member("x.npy", small + bytes(200 * MB))  # 200 KB compressed
    if directory == "lying":
        content = _lying_directory(content, len(small))
    before = rss()
    reset_peak()
    error = assert_error(post_bytes(client, "lying.npz", content), 422, "validation_error")
    expected = "holds more data than its header says" if directory == "honest" else "Bad CRC"
    assert expected in error["message"]
    assert peak_rss() - before < 100 * MB
    assert_still_serving(client)


def test_a_parser_that_explodes_costs_the_child(client: TestClient, tmp_path: Path) -> None:
    """Rows x columns x 8 is the declared size; a label column of long texts (one dictionary
    entry, so a small file) decodes to far more, and the child's memory limit stops it."""
    rows, text = 80_000, "t" * 8192  # 655 MB of label text
    labels = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([text]))
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"a": np.zeros(rows), "label": labels}), path, compression="zstd")
    warm(client)
    before = rss()
    reset_peak()
    error = assert_error(post(client, path, label_column="label"), 413, "payload_too_large")
    assert "more memory than its declared size allows" in error["message"]
    assert peak_rss() - before < 100 * MB
    assert_still_serving(client)


def test_decoding_has_a_time_limit(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "TIMEOUT_S", 0.01)
    error = assert_error(post_bytes(client, "d.csv", b"a\n1\n"), 413, "payload_too_large")
    assert "took longer than 0.01 s" in error["message"]


def test_an_npz_member_that_is_not_npy_is_422(client: TestClient) -> None:
    error = assert_error(
        post_bytes(client, "d.npz", _member("x", b"1,2,3")), 422, "validation_error"
    )
    assert "member 'x' of the .npz is not an .npy array" in error["message"]


@pytest.mark.parametrize("filename", ["big-endian.npy", "big-endian.npz"])
def test_big_endian_arrays_are_accepted_in_native_order(client: TestClient, filename: str) -> None:
    x = np.arange(12, dtype=">f8").reshape(6, 2)
    content = _npy(x) if filename.endswith(".npy") else _npz(x=x, y=np.arange(6, dtype=">i4"))
    response = post_bytes(client, filename, content)
    assert response.status_code == 201, response.text
    data = response.json()
    assert data["dtype"] == "float64" and data["shape"] == [6, 2]
    detail = client.get(f"/v1/datasets/{data['id']}").json()
    assert detail["preview"]["x"][1] == [2.0, 3.0]
    assert [s["max"] for s in detail["statistics"]] == [10.0, 11.0]
