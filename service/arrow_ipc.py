"""Rows and answers as Apache Arrow IPC streams (`application/vnd.apache.arrow.stream`), for
clients whose data already lives in Arrow (pandas, Polars, DuckDB, Spark).

Rows: a table whose columns are numeric features in order, or fixed-size lists of numbers (an
image row flattened), or both; each table row is one input row. Answers: one column per per-row
array of the answer (a fixed-size list when each row holds several numbers, with its row shape in
the field's metadata) and the answer's other values (a threshold) in the schema's metadata, as
JSON. pyarrow is imported on the first Arrow request, never at start-up.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from service.inference import to_json_array

ARROW = "application/vnd.apache.arrow.stream"


def read_rows(body: bytes, max_columns: int) -> np.ndarray:
    """The rows of an Arrow IPC stream as a (rows, features) array; ValueError naming what is
    wrong otherwise (never another exception).

    Compressed streams are refused before anything is decoded: a few compressed megabytes may
    declare gigabytes, while an uncompressed stream decodes to no more than the body's size."""
    import pyarrow as pa

    try:  # ArrowInvalid, ArrowNotImplementedError, OSError, struct.error… become ValueError
        messages = pa.ipc.MessageReader.open_stream(body)
        compressed = any(_compressed(message.metadata.to_pybytes()) for message in messages)
        reader = pa.ipc.open_stream(body)
    except Exception as exc:
        raise _unreadable(exc) from None
    if compressed:
        raise ValueError("compressed Arrow streams are not accepted: send it uncompressed")
    if len(reader.schema) > max_columns:
        raise ValueError(
            f"{len(reader.schema)} columns, more than the {max_columns} numbers of a row"
        )
    try:
        table = reader.read_all()
        table.validate(full=True)
    except Exception as exc:
        raise _unreadable(exc) from None
    if table.num_columns == 0:
        raise ValueError("the table has no columns")
    columns = zip(table.column_names, table.columns, strict=True)
    parts = [_column(name, column) for name, column in columns]
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _column(name: str, column: Any) -> np.ndarray:
    """One column as a (rows, k) float32 array: k = 1 for numbers, the list size for lists."""
    import pyarrow as pa

    if column.null_count:
        raise ValueError(f"column {name!r} has {column.null_count} missing values")
    kind = column.type
    if pa.types.is_fixed_size_list(kind):
        inner, width = kind.value_type, kind.list_size
        if not _numeric(inner):
            raise ValueError(f"column {name!r} holds lists of {inner}, not of numbers")
        chunks = [chunk.flatten() for chunk in column.chunks]
        if any(chunk.null_count for chunk in chunks):
            raise ValueError(f"column {name!r} has missing values inside its lists")
        flat = [np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.float32) for c in chunks]
        values = np.concatenate(flat) if flat else np.zeros(0, dtype=np.float32)
        return values.reshape(len(column), width)
    if not _numeric(kind):
        raise ValueError(
            f"column {name!r} is {kind}: send numeric columns or fixed-size lists of numbers"
        )
    return np.asarray(column.to_numpy(), dtype=np.float32).reshape(-1, 1)


def _numeric(kind: Any) -> bool:
    import pyarrow as pa

    types = pa.types
    return bool(types.is_integer(kind) or types.is_floating(kind) or types.is_boolean(kind))


def _unreadable(exc: Exception) -> ValueError:
    return ValueError(f"it is not a readable Arrow IPC stream ({exc})")


# The IPC message header is a flatbuffer (Arrow's format/Message.fbs). Only one thing is read from
# it: whether a record batch, or a dictionary batch's record batch, declares body compression.
_DICTIONARY_BATCH, _RECORD_BATCH = 2, 3  # MessageHeader union tags
_COMPRESSION = 3  # RecordBatch's field index of `compression`


def _compressed(header: bytes) -> bool:
    root = _u32(header, 0)
    kind_at, body_at = _field(header, root, 1), _field(header, root, 2)
    if kind_at is None or body_at is None:
        return False
    kind, batch = header[kind_at], _table(header, body_at)
    if kind == _DICTIONARY_BATCH:
        data_at = _field(header, batch, 1)
        if data_at is None:
            return False
        batch = _table(header, data_at)
    elif kind != _RECORD_BATCH:
        return False
    return _field(header, batch, _COMPRESSION) is not None


def _field(buffer: bytes, table: int, index: int) -> int | None:
    """Where field `index` of the flatbuffer table at `table` is, or None when it is absent."""
    vtable = table - struct.unpack_from("<i", buffer, table)[0]
    if 4 + 2 * index >= struct.unpack_from("<H", buffer, vtable)[0]:
        return None
    offset = struct.unpack_from("<H", buffer, vtable + 4 + 2 * index)[0]
    return table + offset if offset else None


def _table(buffer: bytes, at: int) -> int:
    return at + _u32(buffer, at)


def _u32(buffer: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", buffer, at)[0])


def write_answer(answer: dict[str, Any]) -> bytes:
    """An operation's answer as an Arrow IPC stream (see the module's docstring)."""
    import pyarrow as pa

    rows = {k: v for k, v in answer.items() if isinstance(v, np.ndarray) and v.ndim > 0}
    others = {k: v for k, v in answer.items() if k not in rows and v is not None}
    fields, arrays = [], []
    for name, values in rows.items():
        if values.ndim == 1:
            array = pa.array(values)
            fields.append(pa.field(name, array.type))
        else:
            width = math.prod(values.shape[1:])
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            array = pa.FixedSizeListArray.from_arrays(flat, width)
            shape = _json(list(values.shape[1:]))
            fields.append(pa.field(name, array.type, metadata={b"shape": shape}))
        arrays.append(array)
    metadata = {k.encode(): _json(v) for k, v in others.items()}
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata or None))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _json(value: Any) -> bytes:
    """JSON as in JSON answers (non-finite numbers as null)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=to_json_array)
