"""Lean HTTP/1.1 clients for the serving benchmarks: keep-alive connections that send one
pre-encoded POST at a time and read its whole answer, so that the client costs little of the
2 cores next to the API (httpx costs ~0.5 ms a request, as much as the API's own floor).

They read answers that carry a Content-Length, which is what every route the benchmarks call
sends, and refuse anything else rather than lose their place in the stream.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from bench.common import percentile


def post_bytes(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    """A POST whose answer is asked for in the body's own format."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\n"
        f"Accept: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _status(line: bytes) -> int:
    if not line:
        raise ConnectionError("the server closed the connection")
    return int(line.split()[1])


def _length(headers: list[bytes]) -> int:
    """The Content-Length of an answer's header lines (raises without one, or when chunked)."""
    length = None
    for line in headers:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            raise ValueError(f"a {value.strip().decode()} answer: only Content-Length is read")
    if length is None:
        raise ValueError("an answer without Content-Length")
    return length


class Client:
    """A blocking keep-alive client: `post` returns the answer's body, or raises unless 200."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(self.address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.answers = self.sock.makefile("rb")

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> bytes:
        request = post_bytes(path, body, content_type)
        try:
            self.sock.sendall(request)
            status = _status(self.answers.readline())
        except ConnectionError:
            # The server closes a connection idle past its keep-alive timeout (uvicorn: 5 s),
            # e.g. while a benchmark loads its next model on a loaded machine; nothing of the
            # answer was read, so the request is sent again once on a new connection.
            self.answers.close()
            self.sock.close()
            self._connect()
            self.sock.sendall(request)
            status = _status(self.answers.readline())
        headers = []
        while (line := self.answers.readline()) not in (b"\r\n", b""):
            headers.append(line)
        answer = self.answers.read(_length(headers))
        if status != 200:
            raise RuntimeError(f"POST {path}: {status} {answer[:300]!r}")
        return answer

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.answers.close()
        self.sock.close()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """One request on a kept-alive connection; the answer's status (its body is read whole)."""
    writer.write(request)
    status = _status(await reader.readline())
    headers = []
    while (line := await reader.readline()) not in (b"\r\n", b""):
        headers.append(line)
    await reader.readexactly(_length(headers))
    return status


async def hammer(url: str, request: bytes, clients: int, seconds: float) -> dict[str, Any]:
    """`clients` connections each sending `request` back to back for `seconds`."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                if await exchange(reader, writer, request) != 200:
                    errors += 1
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return {
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
    }


def interleaved(
    cases: dict[str, Callable[[], Any]], n: int, warm: int = 20
) -> dict[str, list[float]]:
    """`n` timings of each case, taken in turn (a, b, c, a, b, c, …) after `warm` untimed ones,
    so that the machine's drift falls on every case alike."""
    for fn in cases.values():
        for _ in range(warm):
            fn()
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(n):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - start)
    return out


def timed(fn: Callable[[], Any], n: int, warm: int = 20) -> list[float]:
    return interleaved({"": fn}, n, warm)[""]
