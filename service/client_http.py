"""The `thermoml` client's HTTP side: requests with the server's own error messages, and a job's
server-sent events, resumed with Last-Event-ID across reconnections."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

RECONNECTS = 20


class ClientError(Exception):
    """Something to tell the user in one line (exit code 1)."""


class Api:
    def __init__(
        self,
        server: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json", "User-Agent": "thermoml-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.server = server.rstrip("/")
        self.http = httpx.Client(
            base_url=self.server, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach thermoml at {self.server}: {exc}") from None
        if response.status_code >= 400:
            raise ClientError(error_message(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's server-sent events until `end`, reconnecting with Last-Event-ID."""
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
                        raise ClientError(error_message(response))
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
                    raise ClientError(f"lost the event stream of job {job_id}: {exc}") from None
            else:
                failures += 1  # the server closed the stream before `end` (e.g. a restart)
                if failures > RECONNECTS:
                    raise ClientError(f"the event stream of job {job_id} keeps closing")
            time.sleep(min(5.0, 0.2 * 2**failures))


def error_message(response: httpx.Response) -> str:
    """The server's own words: the error envelope's message, or the status line."""
    try:
        error = response.json().get("error") or {}
        message = error.get("message")
        if message:
            return f"{message} ({error.get('code', response.status_code)})"
    except (ValueError, AttributeError):
        pass
    text = response.text.strip()[:300]
    return f"HTTP {response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")


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
