"""The dashboard in a real headless Chromium, driven over the DevTools protocol, against a real
`thermoml up`: the job list, a job page whose plot loads and follows the job live, no request
leaving the server. Also, without a browser, the pages' HTML.

Set THERMOML_DASHBOARD_SCREENSHOT=<path> to keep the job page's screenshot (docs/dashboard.png).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.db import models as model_repo
from service.db.base import new_id, utcnow
from tests.conftest import free_port, submit
from tests.integration.helpers import job_done, start, stop, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--window-size=1280,1000",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
# Long enough (~10 s on a quiet machine, 1 s at a tenth of the walkers) that the job list's
# Workers section, refreshed every 3 s, sees it running.
LIVE_JOB = {
    "kind": "langevin",
    "name": "langevin-live",
    "params": {"steps": 6000, "walkers": 200000, "integrator": "euler_maruyama", "seed": 1},
}


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, timeout: float = 20, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last: {value!r}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", 20, f"{url} to load")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]


@pytest.fixture
def chromium() -> Iterator[DevTools]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (.ci/run installs Debian's package)")
    from websockets.sync.client import connect

    profile = Path(tempfile.mkdtemp(prefix="thermoml-chromium-"))
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 30, "Chromium")
        port = int(port_file.read_text().split()[0])
        targets = wait_for(
            lambda: [
                t
                for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                if t["type"] == "page"
            ],
            15,
            "a page target",
        )
        url = targets[0]["webSocketDebuggerUrl"]
        with connect(url, max_size=64 << 20, open_timeout=10) as ws:
            tools = DevTools(ws)
            for domain in ("Page", "Runtime", "Network"):
                tools.call(f"{domain}.enable")
            yield tools
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def thermoml_up(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {"THERMOML_DATA_DIR": str(tmp_path / "state"), "THERMOML_EVENTS_POLL_INTERVAL": "0.1"}
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URI", "AUTH", "METRICS_AUTH"):
        env[f"THERMOML_{name}"] = ""
    env["THERMOML_AUTH"] = "disabled"
    env["THERMOML_METRICS_AUTH"] = "disabled"
    log = tmp_path / "up.log"
    up = start(["up", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 60, "the API")
        yield base
    finally:
        code = stop(up, signal.SIGINT, timeout=40)
        print(log.read_text()[-3000:])
        assert code == 0


def not_blank(png: bytes) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert pixels.std() > 10, "the screenshot is blank"
    return pixels


@pytest.mark.integration
def test_the_dashboard_follows_a_job_live(chromium: DevTools, thermoml_up: str) -> None:
    base = thermoml_up
    with httpx.Client(base_url=base, timeout=30) as api:
        done = api.post("/v1/jobs", json={"kind": "cooling", "name": "cooling-demo"}).json()
        wait_for(lambda: job_done(api, done["id"]), 60, "the cooling job")
        ising = {"kind": "ising", "name": "ising-sweep", "params": {"temperatures": [2.0, 2.5]}}
        api.post("/v1/jobs", json=ising)
        live = api.post("/v1/jobs", json=LIVE_JOB).json()

        # The job list: every job, with a status badge and a progress bar.
        chromium.open(f"{base}/")
        assert chromium.evaluate("document.title") == "Jobs · thermoml"
        names = chromium.evaluate(
            "[...document.querySelectorAll('#jobs tr td:first-child a')].map(a => a.textContent)"
        )
        assert set(names) == {"cooling-demo", "ising-sweep", "langevin-live"}
        assert chromium.evaluate("document.querySelectorAll('#jobs .progress .bar').length") == 3
        assert chromium.evaluate("document.querySelector('nav a[href=\"/docs\"]') !== null")

        # The live job's page: its plot loads, then progress and plot follow the event stream.
        wait_for(lambda: api.get(f"/v1/jobs/{live['id']}").json()["status"] == "running", 30, "run")
        # Meanwhile the job list's Workers section, refreshed in place, links the running job.
        current = f"#workers a.current-job[href='/jobs/{live['id']}']"
        chromium.wait_for(
            f"document.querySelector({json.dumps(current)}) !== null",
            20,
            "the worker's current job in the Workers section",
        )
        chromium.open(f"{base}/jobs/{live['id']}")
        chromium.wait_for(
            "document.getElementById('plot').complete && "
            "document.getElementById('plot').naturalWidth > 0",
            20,
            "the plot image",
        )
        chromium.wait_for(
            "document.getElementById('live').textContent.startsWith('live')", 30, "the stream"
        )
        first_src = chromium.evaluate("document.getElementById('plot').src")
        chromium.wait_for(
            "document.getElementById('plot').src !== " + json.dumps(first_src),
            30,
            "a live plot update",
        )
        chromium.wait_for(
            "document.querySelector('#status .badge').textContent === 'succeeded'",
            240,
            "the job's end, pushed to the page",
        )
        assert chromium.evaluate("document.getElementById('live').textContent") == (
            "ended: succeeded"
        )
        assert chromium.evaluate("document.querySelector('#progress .progress-text').textContent")
        assert chromium.evaluate(
            "document.querySelector('#latest tr[data-name=\"mean_energy\"]') !== null"
        )
        chromium.wait_for(
            "document.getElementById('plot').dataset.final === 'true' && "
            "document.getElementById('plot').complete && "
            "document.getElementById('plot').naturalWidth > 600",
            20,
            "the final plot",
        )
        shot = chromium.screenshot()
        pixels = not_blank(shot)
        plot_box = chromium.evaluate(
            "(() => { const r = document.getElementById('plot').getBoundingClientRect();"
            " return [r.left, r.top, r.right, r.bottom]; })()"
        )
        left, top, right, bottom = (int(v) for v in plot_box)
        region = pixels[max(top, 0) : min(bottom, pixels.shape[0]), left:right]
        assert region.size and region.std() > 20, "the plot area of the screenshot is empty"
        keep = os.environ.get("THERMOML_DASHBOARD_SCREENSHOT")
        if keep:
            Path(keep).write_bytes(shot)

        # The finished job's page needs no stream; the model list renders.
        chromium.open(f"{base}/jobs/{done['id']}")
        assert chromium.evaluate("document.getElementById('live').textContent") == "ended"
        chromium.wait_for("document.getElementById('plot').naturalWidth > 0", 20, "the plot")
        chromium.open(f"{base}/models")
        assert chromium.evaluate("document.querySelector('h1').textContent") == "Models"

        outside = [
            u for u in chromium.requested_urls() if not u.startswith((base, "data:", "about:"))
        ]
        assert outside == [], "the dashboard must load nothing from other hosts"


# --- the pages' HTML, without a browser ------------------------------------------------------


def test_pages_render_and_escape(client: TestClient) -> None:
    job = submit(client, {"kind": "cooling", "name": "<script>alert(1)</script>"})
    listing = client.get("/")
    assert listing.status_code == 200 and listing.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing.text
    assert "<script>alert(1)" not in listing.text
    page = client.get(f"/jobs/{job['id']}").text
    assert f'src="/v1/jobs/{job["id"]}/metrics.png"' in page
    assert 'href="/docs"' in page
    assert "http://" not in page and "https://" not in page, "no external assets"
    for asset in ("/static/dashboard.css", "/static/dashboard.js", "/static/favicon.svg"):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/static/nope.js").status_code == 404
    missing = client.get("/jobs/nope")
    assert missing.status_code == 404 and "does not exist" in missing.text
    assert "/" not in {p for p in client.get("/openapi.json").json()["paths"]}


def test_a_model_page_shows_evaluation_and_the_sample_grid(client: TestClient) -> None:
    model_id = new_id()
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        model_repo.create(
            session,
            model_id=model_id,
            name="digits-vae",
            kind="vae",
            job_id=None,
            artifact_uri="file:///nowhere",
            sha256="0" * 64,
            capabilities=["encode", "generate"],
            pictures=["latent_traversal", "samples"],
            evaluation={"energy_distance": 0.0123, "mmd": 0.5},
            created_at=utcnow(),
        )
    page = client.get("/models/digits-vae").text
    samples = page.index(f'src="/v1/models/{model_id}/samples.png"')
    other = page.index(f'src="/v1/models/{model_id}/latent_traversal.png"')
    assert samples < other, "the sample grid comes first"
    assert "energy_distance" in page and "0.0123" in page
    assert "digits-vae" in client.get("/models").text
    assert client.get("/models/nope").status_code == 404
