"""Request bodies of rows and the answers to them, in every format the model operations speak.

Rows come as JSON (`{"inputs": [[…]]}`), as a NumPy array (`Content-Type: application/x-npy`) or
as an Apache Arrow IPC stream (`application/vnd.apache.arrow.stream`, for clients whose data
already lives in Arrow: pandas, Polars, DuckDB, Spark). Answers are JSON (non-finite numbers as
null), or NumPy with `Accept: application/x-npy` (the main array) or `application/x-npz` (all
arrays), or Arrow with `Accept: application/vnd.apache.arrow.stream` (all arrays).

Arrow rows: a table whose columns are numeric features in order, or fixed-size lists of numbers
(an image row flattened), or both; each table row is one input row. Arrow answers: one column per
per-row array of the answer (a fixed-size list when each row holds several numbers, with its row
shape in the field's metadata) and the answer's other values (a threshold) in the schema's
metadata, as JSON. pyarrow is imported on the first Arrow request, never at start-up.
"""

from __future__ import annotations

import functools
import io
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.errors import ServiceError
from service.inputs import bounded_int
from service.schemas.inference import ANSWER_MODELS, Rows

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
ARROW = "application/vnd.apache.arrow.stream"
BINARY = {"type": "string", "format": "binary"}
# The rows' JSON schema is one component, `Rows`, shared by the row operations (the OpenAPI
# document adds it: service.api.openapi). `.npy` comes last: a generated client that maps both
# binary types to one `File` sends a `File` as the last one it was told of.
ROWS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": {"$ref": "#/components/schemas/Rows"}},
            ARROW: {"schema": BINARY},
            NPY: {"schema": BINARY},
        },
    }
}


def answers(operation: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answers of a model operation: its JSON model, or the binary formats."""
    return {
        200: {
            "model": ANSWER_MODELS[operation],
            "description": "JSON, or with `Accept`: `.npy` (the main array; other values in "
            "`X-…` headers), `.npz` (every array) or an Arrow IPC stream",
            "content": {
                NPY: {"schema": BINARY},
                NPZ: {"schema": BINARY},
                ARROW: {"schema": BINARY},
            },
        }
    }


@dataclass(frozen=True)
class Encoded:
    """An answer ready to send."""

    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


# --- rows in ------------------------------------------------------------------------------------


def read_rows(body: bytes, content_type: str, *, max_columns: int) -> np.ndarray | list[Any]:
    """The rows of a request body, by its media type (JSON when it names no other); ServiceError
    `validation_error` saying what is wrong otherwise. `max_columns` bounds an Arrow table."""
    media_type = content_type.split(";")[0].strip()
    if media_type == NPY:
        try:
            return npy_array(body)
        except (ValueError, OSError, OverflowError) as exc:
            raise ServiceError("validation_error", f"the body is not a .npy array: {exc}") from None
    if media_type == ARROW:
        try:
            return arrow_rows(body, max_columns=max(1, max_columns))
        except ValueError as exc:
            raise ServiceError("validation_error", f"the body is not usable rows: {exc}") from None
    return json_rows(body)


DEEP = "the JSON body is nested too deeply (rows nest a few levels; orjson stops at 1024)"


def json_rows(body: bytes) -> list[Any]:
    """`{"inputs": [[…], …]}`'s rows; non-finite numbers are read (and refused later).

    orjson refuses nesting deeper than 1024 levels; what else it refuses (NaN, Infinity,
    integers past a double) is read again by the standard parser, which takes no integer of
    more than 64 bits (service.inputs.bounded_int) and is stopped by its recursion limit."""
    try:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if str(exc).startswith("depth limit"):
                raise ServiceError("validation_error", DEEP) from None
            parsed = json.loads(body, parse_int=bounded_int)
        if isinstance(parsed, dict) and parsed.keys() == {"inputs"} and parsed["inputs"]:
            inputs = parsed["inputs"]
            if isinstance(inputs, list):
                return inputs
        return Rows.model_validate(parsed).inputs  # not the usual shape: say what is wrong
    except RecursionError:
        raise ServiceError("validation_error", DEEP) from None
    except ValueError as exc:  # json.JSONDecodeError and pydantic.ValidationError
        message = str(exc).splitlines()[0] if str(exc) else "invalid JSON"
        raise ServiceError(
            "validation_error", f'send {{"inputs": [[…], …]}} or an {NPY} body: {message}'
        ) from None


NPY_LENGTH_BYTES = {(1, 0): 2, (2, 0): 4, (3, 0): 4}  # format version: header-length field
NPY_MAX_HEADER = 10_000  # bytes; numpy's own limit
NPY_CACHED_HEADER = 1024  # bytes; longer headers are parsed each time


def npy_array(body: bytes) -> np.ndarray:
    """A .npy body as an array over the body's own bytes (no copy for C-ordered arrays)."""
    if len(body) < 10 or body[:6] != b"\x93NUMPY":
        raise ValueError("it does not start with the .npy magic string")
    version = (body[6], body[7])
    width = NPY_LENGTH_BYTES.get(version)
    if width is None:
        raise ValueError(f"format version {version[0]}.{version[1]} is not one numpy writes")
    header_length = int.from_bytes(body[8 : 8 + width], "little")
    if header_length > NPY_MAX_HEADER:
        raise ValueError(f"a {header_length}-byte header (at most {NPY_MAX_HEADER})")
    offset = 8 + width + header_length
    head = body[:offset]
    parse = _npy_header if len(head) <= NPY_CACHED_HEADER else _npy_header.__wrapped__
    shape, fortran, dtype = parse(head)
    count = math.prod(shape)
    if len(body) - offset != count * dtype.itemsize:
        raise ValueError(f"the header announces {count} values of {dtype}; the data differs")
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C")


@functools.lru_cache(maxsize=256)
def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """A .npy header's (shape, Fortran order, dtype), checked. Cached: a client sends the same
    header again and again, and numpy parses it with `ast.literal_eval` (~15 µs)."""
    header = io.BytesIO(head)
    version = np.lib.format.read_magic(header)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0  # 3.0 differs only in allowing utf-8 names
    )
    try:
        shape, fortran, dtype = read(header)
    except ValueError:
        raise
    except Exception as exc:  # numpy's parser lets SyntaxError, TokenError, IndexError… out
        raise ValueError(f"its header is not readable ({type(exc).__name__})") from None
    if dtype.kind not in "biuf" or dtype.itemsize == 0:
        raise ValueError(f"numbers are expected, not {dtype}")
    if len(shape) == 0:
        raise ValueError("a 0-d array holds no rows")
    return shape, fortran, dtype


# --- Arrow IPC ---------------------------------------------------------------------------------


def arrow_rows(body: bytes, max_columns: int) -> np.ndarray:
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


def arrow_answer(answer: dict[str, Any]) -> bytes:
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


# --- answers out --------------------------------------------------------------------------------


def encode_answer(answer: dict[str, Any], accept: str, *, primary: str) -> Encoded:
    """`answer` in the format `accept` asks for; `primary` names the array a .npy answer holds
    (the others go in `X-…` headers when they are not arrays)."""
    if ARROW in accept:
        return Encoded(arrow_answer(answer), ARROW)
    if NPZ in accept:
        buffer = io.BytesIO()
        arrays = {k: np.asarray(v) for k, v in answer.items() if v is not None}
        np.savez(buffer, **arrays)
        return Encoded(buffer.getvalue(), NPZ)
    if NPY in accept:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(answer[primary]), allow_pickle=False)
        headers = {
            f"X-{k.replace('_', '-').title()}": str(to_json_array(v))
            for k, v in answer.items()
            if not isinstance(v, np.ndarray) and v is not None
        }
        return Encoded(buffer.getvalue(), NPY, headers)
    return Encoded(_json(answer), JSON)


def _json(value: Any) -> bytes:
    """JSON with NumPy values, non-finite numbers as null."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=to_json_array)


def to_json_array(values: Any) -> Any:
    """NumPy to JSON-ready lists; non-finite numbers become None."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return np.where(np.isfinite(values), values, None).tolist()
        return values.tolist()
    if isinstance(values, np.generic):
        return values.item()
    if isinstance(values, float) and not np.isfinite(values):
        return None
    return values
