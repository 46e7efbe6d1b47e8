""".npy and .npz files read within what their headers declare.

`np.load` trusts a file: it allocates what an .npy header asks for and inflates whatever a zip
member holds. Here a header is read first (its shape and dtype give the decoded size before any
data is read), exactly that many bytes are then read, and never more: a zip member that holds more
than its .npy header says is refused, whatever its zip header claims. Objects are never
unpickled. Arrays come back in native byte order.
"""

from __future__ import annotations

import lzma
import math
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ml.core.dataset_types import DataError

MAX_HEADER_BYTES = 10_000  # numpy's own default for untrusted files
CHUNK = 8 << 20
# What reading a corrupt .npy/.npz can raise; anything else is a bug of ours.
UNREADABLE = (
    ValueError,
    OSError,
    EOFError,
    zipfile.BadZipFile,
    RuntimeError,  # an encrypted member
    NotImplementedError,  # an unknown compression method
    zlib.error,
    lzma.LZMAError,
    struct.error,
)


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def read_header(handle: IO[bytes], what: str) -> NpyHeader:
    """The header of the .npy data that `handle` is at; the handle is left at the data."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            read = np.lib.format.read_array_header_1_0
        elif version == (2, 0):
            read = np.lib.format.read_array_header_2_0
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        shape, fortran, dtype = read(handle, max_header_size=MAX_HEADER_BYTES)
    except UNREADABLE as exc:
        raise DataError(f"not a readable {what}: {exc}") from exc
    if dtype.hasobject:
        raise DataError(
            f"{what} holds Python objects, which are not loaded (no pickles); save numeric "
            "arrays with numpy.save or numpy.savez"
        )
    return NpyHeader(tuple(int(d) for d in shape), dtype, bool(fortran))


def _read_body(handle: IO[bytes], header: NpyHeader, what: str) -> np.ndarray:
    flat = np.empty(header.count, dtype=header.dtype)
    target = flat.view(np.uint8).reshape(-1).data
    done = 0
    while done < header.nbytes:
        got = handle.readinto(target[done : done + CHUNK])  # type: ignore[attr-defined]
        if not got:
            raise DataError(
                f"{what} is shorter than its header says ({done} of {header.nbytes} bytes)"
            )
        done += got
    if header.fortran:
        array = flat.reshape(header.shape[::-1]).transpose()
    else:
        array = flat.reshape(header.shape)
    return native(array)


def native(array: np.ndarray) -> np.ndarray:
    """`array` in the machine's byte order (swapped in place when it was not)."""
    if array.dtype.isnative or array.dtype.byteorder == "|":
        return array
    array.byteswap(inplace=True)
    return array.view(array.dtype.newbyteorder("="))


def npy_bytes(path: Path) -> int:
    """The decoded size of an .npy file, from its header alone."""
    with Path(path).open("rb") as handle:
        return read_header(handle, ".npy file").nbytes


def read_npy(path: Path) -> np.ndarray:
    with Path(path).open("rb") as handle:
        header = read_header(handle, ".npy file")
        return _read_body(handle, header, "the .npy file")


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's arrays by name (`x` for the member `x.npy`, as numpy names them)."""
    members = {}
    for info in archive.infolist():
        members[info.filename.removesuffix(".npy")] = info
    if "x" not in members:
        found = ", ".join(members) or "none"
        raise DataError(f"the .npz needs an array named x (and optionally y); it has: {found}")
    for name in ("x", "y"):
        member = members.get(name)
        if member is not None and not member.filename.endswith(".npy"):
            raise DataError(
                f"member {member.filename!r} of the .npz is not an .npy array; save the arrays "
                "with numpy.savez(path, x=..., y=...)"
            )
    return members


def _open_npz(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except UNREADABLE as exc:
        raise DataError(f"not a readable .npz file: {exc}") from exc


def _arrays(archive: Any) -> Iterator[tuple[str, Any, str]]:
    """The members x and (if there) y: (name, zip entry, how an error names it)."""
    members = _members(archive)
    for name in ("x", "y"):
        if name in members:
            yield name, members[name], f"member {members[name].filename!r} of the .npz"


def npz_bytes(path: Path) -> int:
    """The decoded size of an .npz's arrays x and y, from their .npy headers (only those are
    inflated); a member whose zip directory entry declares more is refused."""
    with _open_npz(path) as archive:
        total = 0
        for _, info, what in _arrays(archive):
            try:
                with archive.open(info) as handle:
                    header = read_header(handle, what)
                    declared = handle.tell() + header.nbytes
            except UNREADABLE as exc:
                raise DataError(f"not a readable .npz file: {exc}") from exc
            if info.file_size > declared:
                raise DataError(f"{what} holds more data than its header says")
            total += header.nbytes
        return total


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The arrays x and (if there) y; each member inflated only as far as its header says."""
    with _open_npz(path) as archive:
        arrays: dict[str, np.ndarray] = {}
        for name, info, what in _arrays(archive):
            try:
                with archive.open(info) as handle:
                    arrays[name] = _read_body(handle, read_header(handle, what), what)
                    if handle.read(1):  # also makes zipfile check the member's CRC
                        raise DataError(f"{what} holds more data than its header says")
            except UNREADABLE as exc:
                raise DataError(f"not a readable .npz file: {exc}") from exc
    return arrays["x"], arrays.get("y")
