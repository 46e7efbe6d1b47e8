"""An application whose lifespan ended and started again (the same app object, as test clients
and ASGI test transports do) streams events again: shutting down closed the old event hub, and
the next start does not inherit it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app
from tests.conftest import RecordingPublisher, submit

COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}


def test_events_after_the_app_is_started_again(settings: Settings) -> None:
    app = create_app(settings, reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=True)
    for start in range(2):
        with TestClient(app) as client:
            job = submit(client, COOLING)  # ends at once: its stream ends with `end`
            stream = client.get(f"/v1/jobs/{job['id']}/events")
            assert stream.status_code == 200, (start, stream.text)
            assert "event: end" in stream.text
            missing = client.get("/v1/jobs/nonesuch/events")
            assert missing.status_code == 404, (start, missing.text)
