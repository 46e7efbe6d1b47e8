"""The HTTP side of the client: one connection pool, the key as a Bearer token, retries with
back-off on 429 and 503 (honouring Retry-After), typed errors, and a job's server-sent events
resumed with Last-Event-ID across reconnections."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx

from thermoml.errors import ConnectionFailed, ThermomlError, from_response

RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
MAX_WAIT = 30.0  # seconds: the longest pause between two attempts, whatever Retry-After says
RECONNECTS = 20  # event-stream reconnections in a row before giving up


class Transport:
    """Requests to one thermoml server. `retries` more attempts after a 429 or a 503, or after a
    connection that could not be opened (any method), or a connection lost while reading (only
    methods that are safe to repeat); `http` replaces the underlying httpx client (tests)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        http: httpx.Client | None = None,
        user_agent: str = "thermoml-python",
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": user_agent}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self.retries = retries
        self.http = http or httpx.Client(base_url=self.url, timeout=timeout)
        self.http.headers.update(headers)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response to a request that succeeded; a `ThermomlError` otherwise."""
        attempt = 0
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                repeatable = isinstance(exc, httpx.ConnectError) or method in IDEMPOTENT
                if not repeatable or attempt >= self.retries:
                    raise ConnectionFailed(
                        f"cannot reach thermoml at {self.url}: {exc}", code="connection_failed"
                    ) from None
                self._pause(attempt, None)
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            error = from_response(response)
            if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
                raise error
            self._pause(attempt, error)
            attempt += 1

    @staticmethod
    def _pause(attempt: int, error: ThermomlError | None) -> None:
        """Retry-After when the server says it, else exponential back-off with jitter."""
        if error is not None and error.retry_after is not None:
            wait = error.retry_after
        else:
            wait = 0.25 * 2**attempt * (0.5 + random.random())
        time.sleep(min(MAX_WAIT, wait))

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's server-sent events, `(event, data)`, until `end`; a dropped stream is
        resumed where it stopped (Last-Event-ID)."""
        last_id: str | None = None
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id
            try:
                with self.http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=None),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise from_response(response)
                    for event_id, event, data in parse_sse(response.iter_lines()):
                        failures = 0
                        if event_id is not None:
                            last_id = event_id
                        yield event, data
                        if event == "end":
                            return
            except httpx.TransportError as exc:
                failures += 1
                if failures > RECONNECTS:
                    raise ConnectionFailed(
                        f"lost the event stream of job {job_id}: {exc}", code="connection_failed"
                    ) from None
            else:
                failures += 1  # the server closed the stream before `end` (e.g. a restart)
                if failures > RECONNECTS:
                    raise ConnectionFailed(
                        f"the event stream of job {job_id} keeps closing", code="connection_failed"
                    )
            time.sleep(min(5.0, 0.2 * 2**failures))


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str, dict[str, Any]]]:
    """(id, event, data) of each event of a text/event-stream."""
    event_id: str | None = None
    event = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, event, json.loads("\n".join(data))
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)
