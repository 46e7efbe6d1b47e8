"""A streaming multipart reader for data set uploads, with a size limit enforced as bytes arrive.

Starlette's form parser reads the whole body before a route sees it; this one writes the `file`
part to a local temporary file while hashing it, and answers 413 as soon as the limit is passed,
without reading the rest. Text fields are small and kept in memory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.datasets import ReceivedFile
from service.errors import ServiceError
from service.inputs import check_text

FIELD_LIMIT = 64 * 1024  # bytes of one text field
FORM_OVERHEAD = 1 << 20  # boundaries, part headers and text fields on top of the file
HEAD_BYTES = 16
EXPECTED = "multipart/form-data with a `file` part (and optional `name`, `label_column`)"


def _too_large(limit: int) -> ServiceError:
    return ServiceError(
        "payload_too_large",
        f"the upload is larger than the limit of {limit} bytes (THERMOML_MAX_UPLOAD_BYTES); "
        "upload a smaller file, e.g. as Parquet or NPY, which are more compact than CSV",
        {"max_upload_bytes": limit},
    )


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Upload:
    """The parsed form: the spooled file (or None) and the text fields."""

    file: ReceivedFile | None
    fields: dict[str, str]

    def discard(self) -> None:
        if self.file is not None:
            self.file.path.unlink(missing_ok=True)


class _Reader:
    def __init__(self, limit: int, folder: Path) -> None:
        self.limit, self.folder = limit, folder
        self.part = _Part()
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.fields: dict[str, str] = {}
        self.file: IO[bytes] | None = None
        self.file_path: Path | None = None
        self.filename: str | None = None
        self.digest = hashlib.sha256()
        self.size = 0
        self.head = b""
        self.seen_file = False

    # python-multipart callbacks
    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[bytes(self.header_name).lower()] = bytes(self.header_value)
        self.header_name, self.header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options and self.part.name == "file":
            if self.seen_file:
                raise ServiceError("validation_error", "send one `file` part per upload")
            self.seen_file = True
            self.filename = options[b"filename"].decode("utf-8", "replace")
            check_text(self.filename, "form.file.filename")  # the data set's default name
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix="upload-", dir=self.folder)
            self.file, self.file_path = os.fdopen(handle, "wb"), Path(name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part.name == "file" and self.file is not None and self.filename is not None:
            self.size += len(chunk)
            if self.size > self.limit:
                raise _too_large(self.limit)
            if len(self.head) < HEAD_BYTES:
                self.head += chunk[: HEAD_BYTES - len(self.head)]
            self.digest.update(chunk)
            self.file.write(chunk)
            return
        if len(self.part.data) + len(chunk) > FIELD_LIMIT:
            raise ServiceError(
                "validation_error",
                f"form field {self.part.name!r} is longer than {FIELD_LIMIT} bytes",
            )
        self.part.data += chunk

    def on_part_end(self) -> None:
        if self.part.name == "file" and self.file is not None:
            self.file.close()
        elif self.part.name:
            value = self.part.data.decode("utf-8", "replace")
            check_text(self.part.name, "form")
            check_text(value, f"form.{self.part.name}")
            self.fields[self.part.name] = value

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()

    def result(self) -> Upload:
        received = None
        if self.file_path is not None:
            received = ReceivedFile(
                path=self.file_path,
                filename=self.filename,
                sha256=self.digest.hexdigest(),
                size=self.size,
                head=self.head,
            )
        return Upload(received, self.fields)


async def receive(request: Request, *, limit: int, folder: Path) -> Upload:
    """Stream the multipart body into a temporary file under `folder`; 413 past `limit`."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise ServiceError("validation_error", f"send the data set as {EXPECTED}")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise _too_large(limit)
    reader = _Reader(limit, folder)
    callbacks = {
        name: getattr(reader, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    parser = MultipartParser(params[b"boundary"], callbacks)  # type: ignore[arg-type]
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + FORM_OVERHEAD:
                raise _too_large(limit)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        reader.close()
        reader.result().discard()
        raise ServiceError("validation_error", f"malformed multipart body: {exc}") from exc
    except BaseException:
        reader.close()
        reader.result().discard()
        raise
    reader.close()
    upload = reader.result()
    if upload.file is None:
        raise ServiceError("validation_error", f"no file in the upload; send {EXPECTED}")
    return upload
