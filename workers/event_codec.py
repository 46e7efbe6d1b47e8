"""TensorBoard's event files, encoded and decoded here without TensorFlow or `tensorboard`.

An event file is a sequence of TFRecord frames, each an `Event` protocol buffer; of
`tensorflow/core/util/event.proto` and `summary.proto` only the fields that scalars need are
written: `Event{wall_time = 1, step = 2, file_version = 3 | summary = 5}`,
`Summary{value = 1}`, `Summary.Value{tag = 1, simple_value = 2}`. The reader reads what the
writer writes (and skips other fields); it stops at the first incomplete or corrupt frame, which is
where a writer that died mid-write left off.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

FILE_VERSION = b"brain.Event:2"
FLOAT32_MAX = 3.4028234663852886e38

# --- CRC-32C (Castagnoli), as TFRecord frames use it -----------------------------------------


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord frame: length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return (
        length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))
    )


def read_frames(data: bytes) -> Iterator[bytes]:
    """The payloads of the complete, intact frames at the start of `data`."""
    at = 0
    while at + 12 <= len(data):
        length_bytes = data[at : at + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        (length_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
        end = at + 12 + length + 4
        if length_crc != masked_crc(length_bytes) or end > len(data):
            return
        payload = data[at + 12 : at + 12 + length]
        if struct.unpack("<I", data[end - 4 : end])[0] != masked_crc(payload):
            return
        yield payload
        at = end


# --- protocol buffer fields ---------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as protobuf encodes it (negative: ten bytes)
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def scalar_value(tag: str, value: float) -> bytes:
    """`Summary.Value{tag = 1, simple_value = 2}`; a float32, so beyond its range ±inf."""
    if math.isfinite(value) and abs(value) > FLOAT32_MAX:
        value = math.copysign(math.inf, value)
    return _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def event(
    wall_time: float, step: int, *, file_version: bytes | None = None, values: Iterable[bytes] = ()
) -> bytes:
    """`Event{wall_time = 1, step = 2, file_version = 3 | summary = 5}`."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version)
    else:
        summary = b"".join(_bytes_field(1, v) for v in values)
        out += _bytes_field(5, summary)
    return out


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a message: varints as ints, the fixed and length-delimited
    types as their bytes. Raises ValueError on a malformed message."""
    at = 0

    def varint() -> int:
        nonlocal at
        value, shift = 0, 0
        while True:
            if at >= len(data) or shift > 63:
                raise ValueError("truncated varint")
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while at < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, varint()
            continue
        size = {1: 8, 5: 4}.get(wire)
        if size is None:
            if wire != 2:
                raise ValueError(f"wire type {wire} is not read")
            size = varint()
        if at + size > len(data):
            raise ValueError("truncated field")
        yield number, data[at : at + size]
        at += size


@dataclass
class Event:
    wall_time: float = 0.0
    step: int = 0
    file_version: bytes | None = None
    scalars: dict[str, float] = field(default_factory=dict)


def decode_event(data: bytes) -> Event:
    out = Event()
    for number, value in _fields(data):
        if number == 1 and isinstance(value, bytes) and len(value) == 8:
            out.wall_time = struct.unpack("<d", value)[0]
        elif number == 2 and isinstance(value, int):
            out.step = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 3 and isinstance(value, bytes):
            out.file_version = value
        elif number == 5 and isinstance(value, bytes):
            for summary_field, entry in _fields(value):
                if summary_field == 1 and isinstance(entry, bytes):
                    out.scalars.update(_decode_value(entry))
    return out


def _decode_value(data: bytes) -> dict[str, float]:
    tag, number = None, None
    for field_number, value in _fields(data):
        if field_number == 1 and isinstance(value, bytes):
            tag = value.decode("utf-8", "replace")
        elif field_number == 2 and isinstance(value, bytes) and len(value) == 4:
            number = struct.unpack("<f", value)[0]
    return {tag: number} if tag is not None and number is not None else {}


def read_events(data: bytes) -> list[Event]:
    """The events of an event file's intact frames (a frame that does not decode ends it too)."""
    events = []
    for payload in read_frames(data):
        try:
            events.append(decode_event(payload))
        except ValueError:
            break
    return events
