"""Uploaded files are decoded in a child process with a memory limit, never in the API's.

The child (`python -m service.decoding`, a fresh interpreter: forking the API's threads is not
safe) first reads the file's headers under a small address-space limit: what they declare decoded
(`ml.core.decoded_size`) is checked against THERMOML_MAX_DATASET_BYTES before any data is
inflated. It then raises its limit to what decoding that much needs, decodes and checks the file,
and prints the data set's description (shape, labels, statistics) as JSON: the API never holds the
arrays, and the store keeps the file as uploaded. A file that lies about its size, or a parser that
explodes, costs the child: its MemoryError or its death is answered 413 or 422.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from service.errors import ServiceError

log = logging.getLogger("thermoml.decoding")

MAX_SUMMARY_FEATURES = 64
PREVIEW_ROWS = 5
TIMEOUT_S = 900.0  # decoding 1 GiB of CSV takes well under a minute
HEADERS_BUDGET = 256 << 20  # address space for reading headers
SLACK = 512 << 20  # address space for the interpreter's own growth while decoding
# The parsed table (or the raw text), the float matrix, and a block of statistics at a time.
DECODE_FACTOR = 3
EXIT_DATA, EXIT_TOO_LARGE, EXIT_MEMORY = 2, 3, 4
CHILD_ENV = {
    "ARROW_DEFAULT_MEMORY_POOL": "system",  # no allocator reserving address space up front
    "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MiB of address space per arena
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
LIMIT_NAME = "THERMOML_MAX_DATASET_BYTES"


def too_large(decoded: int, limit: int) -> ServiceError:
    return ServiceError(
        "payload_too_large",
        f"the file decodes to {decoded} bytes of arrays, more than the limit of {limit} bytes "
        f"({LIMIT_NAME}); upload fewer rows or columns (or float32 instead of float64)",
        {"decoded_bytes": decoded, "max_dataset_bytes": limit},
    )


def describe(
    path: Path,
    fmt: str,
    *,
    label_column: str | None,
    name: str,
    max_bytes: int,
) -> dict[str, Any]:
    """The data set row's columns that describe the file's arrays, decoded in a child process.

    ServiceError: 413 when the file decodes to more than `max_bytes` or decoding it needs more
    memory or time than allowed, 422 when it is not usable data.
    """
    job: dict[str, Any] = {"path": str(path), "fmt": fmt, "label_column": label_column}
    job |= {"name": name, "max_bytes": max_bytes}
    env = {**os.environ, **CHILD_ENV}
    timeout = TIMEOUT_S
    try:
        done = subprocess.run(
            [sys.executable, "-m", "service.decoding"],
            input=json.dumps(job).encode(),
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(
            "payload_too_large",
            f"decoding the file took longer than {timeout:g} s; upload a smaller file",
        ) from exc
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if done.returncode == 0 and isinstance(answer, dict):
        return answer
    raise _failure(done, answer, fmt)


def _failure(done: subprocess.CompletedProcess[bytes], answer: Any, fmt: str) -> ServiceError:
    """What a child that did not describe the file is answered."""
    if done.returncode == EXIT_DATA and isinstance(answer, dict):
        return ServiceError("validation_error", str(answer["message"]))
    if done.returncode == EXIT_TOO_LARGE and isinstance(answer, dict):
        return too_large(int(answer["decoded"]), int(answer["limit"]))
    out_of_memory = ServiceError(
        "payload_too_large",
        "decoding the file needed more memory than its declared size allows; the file may "
        "declare less data than it holds, or be corrupt",
    )
    if done.returncode in (EXIT_MEMORY, -signal.SIGKILL):
        return out_of_memory
    log.warning(
        "decoding an uploaded %s file failed (exit %s): %s",
        fmt,
        done.returncode,
        done.stderr.decode("utf-8", "replace")[-4000:],
    )
    return ServiceError(
        "validation_error", f"the file could not be decoded as {fmt}; it may be corrupt"
    )


# --- the child -----------------------------------------------------------------------------------


def _address_space() -> int | None:
    """This process's address space, bytes; None where /proc is not (there is no limit)."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    sizes = [int(line.split()[1]) * 1024 for line in lines if line.startswith("VmSize:")]
    return sizes[0] if sizes else None


def _limit(base: int | None, soft: int, hard: int) -> None:
    """Limit the address space to `base` + `soft` bytes, never above `base` + `hard`."""
    import resource

    if base is not None:
        resource.setrlimit(resource.RLIMIT_AS, (base + min(soft, hard), base + hard))


def described(data: Any) -> dict[str, Any]:
    """A data set row's columns that describe its arrays: shape, labels and statistics."""
    from ml.core.datasets import summarize

    summary = summarize(data, max_features=MAX_SUMMARY_FEATURES, preview_rows=PREVIEW_ROWS)
    columns = {k: getattr(data, k) for k in ("shape", "dtype", "rows", "features")}
    return {**columns, "has_labels": data.y is not None, "summary": summary}


def _child(job: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from ml.core import datasets, decoded_size

    path, fmt, max_bytes = Path(job["path"]), str(job["fmt"]), int(job["max_bytes"])
    if fmt in ("csv", "parquet"):
        import pyarrow as pa
        import pyarrow.csv  # imported before the address space is measured
        import pyarrow.parquet

        pa.set_cpu_count(2)  # each thread's stack is address space
        pa.set_io_thread_count(2)
    base, size = _address_space(), path.stat().st_size
    hard = SLACK + size + DECODE_FACTOR * max_bytes
    _limit(base, HEADERS_BUDGET, hard)
    try:
        decoded = decoded_size.decoded_bytes(path, fmt)
        if decoded > max_bytes:
            return EXIT_TOO_LARGE, {"decoded": decoded, "limit": max_bytes}
        _limit(base, SLACK + size + DECODE_FACTOR * decoded, hard)
        data = datasets.load_file(
            path, fmt, label_column=job["label_column"], name=str(job["name"])
        )
        return 0, described(data)
    except MemoryError:
        return EXIT_MEMORY, {}
    except datasets.DataError as exc:
        return EXIT_DATA, {"message": str(exc).replace(str(path), "the file")}


def main() -> int:
    code, answer = _child(json.loads(sys.stdin.read()))
    print(json.dumps(answer, allow_nan=False), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
