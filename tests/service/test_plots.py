"""`metrics.png`: grouping into panels, units, errors, caching; and that the PNG shows something."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import plots
from tests.conftest import RecordingPublisher, submit

COOLING = {"kind": "cooling", "params": {"method": "euler", "dt": 0.5}}


def image(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


def test_metrics_png_draws_the_history(client: TestClient) -> None:
    job = submit(client, COOLING)
    response = client.get(f"/v1/jobs/{job['id']}/metrics.png")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    pixels = image(response.content)
    assert pixels.std() > 10, "the picture is blank"
    assert (pixels < 128).mean() > 0.01, "too little ink for four panels of lines and text"
    # 4 panels (temperature, entropy, entropy production, heat; time is the x axis): 2 rows.
    assert pixels.shape[0] == pytest.approx(100 * (2 * plots.PANEL_SIZE[1] + 0.5), abs=2)


def test_names_choose_the_panels(client: TestClient) -> None:
    job = submit(client, COOLING)
    url = f"/v1/jobs/{job['id']}/metrics.png"
    one = image(client.get(url, params={"names": "temperature"}).content)
    two = image(client.get(url, params=[("names", "temperature"), ("names", "heat")]).content)
    assert one.shape[1] < two.shape[1]  # one column for a single panel
    # `time` is drawn as a panel only when asked for.
    with_time = client.get(url, params={"names": "time,temperature"})
    assert with_time.status_code == 200


def test_unknown_names_and_jobs_are_404(client: TestClient) -> None:
    job = submit(client, COOLING)
    response = client.get(f"/v1/jobs/{job['id']}/metrics.png", params={"names": "heat,bogus"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert "bogus" in error["message"] and "temperature" in error["message"]
    assert "entropy_total" in error["details"]["available"]
    missing = client.get("/v1/jobs/nope/metrics.png")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_a_job_without_points_gets_a_placeholder(client: TestClient) -> None:
    client.app.state.publisher = RecordingPublisher(run_inline=False)  # type: ignore[attr-defined]
    job = submit(client, COOLING)
    response = client.get(f"/v1/jobs/{job['id']}/metrics.png")
    assert response.status_code == 200
    assert image(response.content).std() > 1


def test_etag_answers_304_until_the_points_change(client: TestClient) -> None:
    job = submit(client, COOLING)
    url = f"/v1/jobs/{job['id']}/metrics.png"
    first = client.get(url)
    etag = first.headers["etag"]
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content
    other = client.get(url, params={"names": "heat"})
    assert other.headers["etag"] != etag


def test_thermodynamic_metrics_share_panels() -> None:
    names = [
        "internal_energy",
        "free_energy",
        "temperature_noise",
        "temperature_virial",
        "weight_entropy",
        "entropy_production",
        "entropy_production_excess",
        "loss",
        "val_loss",
        "grad_noise_scale",
        "lr",
    ]
    panels = {p.key: p.names for p in plots.panels_for(names)}
    assert panels["energy"] == ["internal_energy", "free_energy"]
    assert panels["temperature"] == ["temperature_noise", "temperature_virial"]
    assert panels["entropy"] == ["weight_entropy"]
    assert panels["entropy_production"] == ["entropy_production", "entropy_production_excess"]
    assert panels["loss"] == ["loss", "val_loss"]
    assert panels["grad_noise_scale"] == ["grad_noise_scale"] and panels["lr"] == ["lr"]
    order = [p.key for p in plots.panels_for(names)]
    assert order.index("energy") < order.index("temperature") < order.index("entropy")


@pytest.mark.parametrize(
    ("kind", "category", "spec", "key", "unit"),
    [
        ("cooling", "simulation", {"params": {"temperature_unit": "kelvin"}}, "temperature", "K"),
        ("cooling", "simulation", {}, "temperature", "°C"),
        ("ising", "simulation", {}, "energy_per_spin", "J"),
        ("langevin", "simulation", {}, "energy", "energy units (k_B = 1)"),
        ("vae", "model", {}, "temperature", "loss units"),
        ("vae", "model", {}, "entropy_production", "nats / step"),
    ],
)
def test_units(kind: str, category: str, spec: dict, key: str, unit: str) -> None:  # type: ignore[type-arg]
    assert plots.unit_of(key, kind=kind, category=category, spec=spec) == unit


def test_render_a_training_history_with_gaps_and_many_points() -> None:
    steps = list(range(0, 50_000, 5))
    series = {
        "internal_energy": {"steps": steps, "values": [math.exp(-s / 1e4) for s in steps]},
        "free_energy": {"steps": steps, "values": [None if s % 700 == 0 else 0.5 for s in steps]},
        "temperature_noise": {"steps": steps, "values": [1e-3] * len(steps)},
    }
    png = plots.render(series, kind="vae", category="model", title="t")
    assert image(png).std() > 10


def test_thinning_keeps_the_extremes() -> None:
    xs = [float(i) for i in range(100_000)]
    ys = [0.0] * len(xs)
    ys[54_321] = 99.0
    tx, ty = plots._thin(xs, ys)
    assert len(tx) <= plots.MAX_POINTS_PER_LINE + 2
    assert max(ty) == 99.0 and tx == sorted(tx)


def test_a_metric_without_a_defined_point_gets_no_empty_panel() -> None:
    steps = list(range(0, 200, 10))
    defined = {"internal_energy": {"steps": steps, "values": [1.0 / (1 + s) for s in steps]}}
    series = {
        **defined,
        "fdr_ratio": {"steps": steps, "values": [None] * len(steps)},
        "heat": {"steps": steps, "values": [float("nan")] * len(steps)},
        "lr": {"steps": steps, "values": [None] * (len(steps) - 1) + [1e-3]},
    }
    assert plots.shown(series) == ["internal_energy", "lr"]
    assert plots.shown(series, ["fdr_ratio", "nonesuch"]) == ["fdr_ratio"]  # asked for: drawn
    both = {**defined, "lr": series["lr"]}
    same = plots.render(series, kind="vae", category="model")
    assert np.array_equal(image(same), image(plots.render(both, kind="vae", category="model")))
    asked = plots.render(series, kind="vae", category="model", names=["internal_energy", "heat"])
    assert image(asked).shape != image(same).shape or not np.array_equal(image(asked), image(same))
