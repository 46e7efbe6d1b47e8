"""The job page's telemetry: a metric whose every point is null for the job is listed apart with
the telemetry's reason in its tooltip, `equilibrium` is a badge with its statistic in the tooltip,
and `grad_noise_scale` reads "≥ value" when it is a lower bound. The points come from the real
`Thermometer`, so what is hidden is what the telemetry records."""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ml.core.telemetry import EQUILIBRIUM_MIN_POINTS, Measurement, Thermometer
from service import telemetry_notes
from service.db import metrics as metric_repo
from service.db.base import new_id, utcnow
from service.db.tables import Job
from workers import runtime

LR, MOMENTUM, BATCH, MICRO = 0.05, 0.9, 64, 16


def telemetry(
    points: int, *, optimizer: str, balance: float, heat: bool, noisy_gradient: bool
) -> list[dict[str, float | None]]:
    """What the training loop records at `points` measuring points. `balance` is (θ − θ̄)·g over
    (α/2)(1 + μ)vᵀPv (1: the fluctuation–dissipation relation holds); `noisy_gradient` makes
    |G|² unresolved (grad_noise_scale a lower bound)."""
    rng = np.random.default_rng(7)
    momentum = 0.0 if optimizer == "rmsprop" else MOMENTUM
    thermometer = Thermometer(optimizer=optimizer, momentum=momentum, n_params=20, sampled=20)
    out = []
    for k in range(points):
        velocity = 2.0 + 0.1 * rng.standard_normal()
        right = LR / 2 * (1 + momentum) * velocity
        measurement = Measurement(
            step=10 * (k + 1),
            learning_rate=LR,
            batch_size=BATCH,
            micro_size=MICRO,
            micro_sqnorm_mean=1.0,
            batch_sqnorm=0.1 if noisy_gradient else 0.9,
            theta_dot_grad=balance * right * (1 + 0.02 * rng.standard_normal()),
            velocity_sqnorm=velocity,
            heat=0.01 if heat else None,
            internal_energy=1.0 / (k + 1),
            theta_sample=rng.standard_normal(20),
            step_rate=LR,
            centered=k > 0,  # the first measuring point has no θ̄
        )
        out.append(thermometer.update(measurement))
    return out


def add_job(kind: str, spec: dict[str, Any], history: list[dict[str, float | None]]) -> str:
    """A running job with these metric points at steps 10, 20, ... (None stored as NULL, as the
    training loop stores it)."""
    job_id = new_id()
    with runtime.sessions().begin() as session:
        session.add(
            Job(
                id=job_id,
                kind=kind,
                name=f"{kind}-{job_id[:8]}",
                spec={"kind": kind, **spec},
                queue="cpu",
                priority=5,
                status="running",
                progress={"fraction": 0.5},
                attempts=1,
                cancel_requested=False,
                created_at=utcnow(),
            )
        )
        session.flush()
        points = [
            (name, 10 * (k + 1), math.nan if value is None else value)
            for k, values in enumerate(history)
            for name, value in values.items()
        ]
        metric_repo.upsert(session, job_id=job_id, points=points)
    return job_id


def trained(optimizer: str) -> dict[str, Any]:
    return {"training": {"optimizer": {"name": optimizer}, "telemetry": {"heat": False}}}


def always_null(history: list[dict[str, float | None]]) -> set[str]:
    return {name for name in history[0] if all(h[name] is None for h in history)}


def hidden(page: str) -> dict[str, str]:
    return {
        html.unescape(name): html.unescape(title)
        for name, title in re.findall(r'<li data-name="([^"]*)" title="([^"]*)">', page)
    }


def latest_rows(page: str) -> dict[str, tuple[str, str | None]]:
    """{name: (value text, its cell's title)} of the latest values table."""
    rows = re.findall(
        r'<tr data-name="([^"]*)"><td>[^<]*</td><td>\d+</td><td(?: class="bound" title="([^"]*)")?>'
        r"([^<]*)</td></tr>",
        page,
    )
    return {name: (html.unescape(text), html.unescape(title) or None) for name, title, text in rows}


def badges(page: str) -> list[tuple[str, str, str, str]]:
    """(name, state, title, label) of each equilibrium badge."""
    found = re.findall(
        r'<span class="badge equilibrium equilibrium-(\w+)" data-name="([^"]*)" title="([^"]*)">'
        r"([^<]*)</span>",
        page,
    )
    return [(name, state, html.unescape(title), label) for state, name, title, label in found]


def page_data(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', page, re.S)
    assert found is not None
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def get_page(client: TestClient, job_id: str) -> str:
    answer = client.get(f"/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    return answer.text


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop", "sgld"])
def test_a_metric_null_at_every_point_is_listed_apart_with_its_reason(
    client: TestClient, optimizer: str
) -> None:
    """Three measuring points, heat not measured: the telemetry has no equilibrium test yet and
    no heat; everything else it defines."""
    history = telemetry(3, optimizer=optimizer, balance=1.0, heat=False, noisy_gradient=False)
    undefined = always_null(history)
    assert {"equilibrium", "equilibrium_statistic", "heat", "entropy_production"} <= undefined
    assert "temperature_virial" not in undefined  # null at the first point only
    page = get_page(client, add_job("autoencoder", trained(optimizer), history))
    shown = hidden(page)
    assert set(shown) == undefined
    for name, title in shown.items():
        assert f"autoencoder job (optimizer {optimizer})" in title
        assert title.endswith(telemetry_notes.NULL_REASONS[name])
    assert f"needs {EQUILIBRIUM_MIN_POINTS} measuring points" in shown["equilibrium"]
    assert "telemetry.heat is off" in shown["heat"]
    rows = latest_rows(page)
    assert set(rows) == set(history[0]) - undefined
    assert '<div id="undefined">' in page
    (badge,) = badges(page)
    assert badge[:2] == ("equilibrium", "unknown") and badge[3] == "equilibrium untested"
    assert badge[2].startswith("At step 30: the test needs")
    data = page_data(page)
    assert set(data["defined"]) == set(rows)
    assert data["latest"]["temperature_noise"][0] == 30
    assert data["notes"]["reasons"] == telemetry_notes.NULL_REASONS
    assert data["notes"]["trained"] is True


@pytest.mark.parametrize(("balance", "state"), [(1.0, "in"), (-3.0, "out")])
def test_the_equilibrium_state_is_a_badge_with_its_statistic(
    client: TestClient, balance: float, state: str
) -> None:
    history = telemetry(8, optimizer="sgd", balance=balance, heat=True, noisy_gradient=True)
    last = history[-1]
    assert last["equilibrium"] == (1.0 if state == "in" else 0.0)
    page = get_page(client, add_job("vae", trained("sgd"), history))
    ((name, shown_state, title, label),) = badges(page)
    assert (name, shown_state) == ("equilibrium", state)
    assert label == {"in": "in equilibrium", "out": "not in equilibrium"}[state]
    statistic = last["equilibrium_statistic"]
    assert statistic is not None
    assert title.startswith(f"equilibrium_statistic t = {statistic:.6g} at step 80. ")
    assert "holds to 50% over the last 20 measuring points" in title
    assert "equilibrium" not in hidden(page)  # defined since the sixth point


def test_grad_noise_scale_reads_as_a_bound_when_it_is_one(client: TestClient) -> None:
    bound = telemetry(4, optimizer="adam", balance=1.0, heat=True, noisy_gradient=True)
    estimate = telemetry(4, optimizer="adam", balance=1.0, heat=True, noisy_gradient=False)
    assert bound[-1]["grad_noise_scale_lower_bound"] == 1.0
    assert estimate[-1]["grad_noise_scale_lower_bound"] == 0.0
    rows = latest_rows(get_page(client, add_job("autoencoder", trained("adam"), bound)))
    text, title = rows["grad_noise_scale"]
    assert text == f"≥ {bound[-1]['grad_noise_scale']:.6g}"
    assert title == telemetry_notes.BOUND_TITLE
    rows = latest_rows(get_page(client, add_job("autoencoder", trained("adam"), estimate)))
    assert rows["grad_noise_scale"] == (f"{estimate[-1]['grad_noise_scale']:.6g}", None)


def test_a_gans_players_are_told_apart(client: TestClient) -> None:
    d = telemetry(8, optimizer="adam", balance=1.0, heat=False, noisy_gradient=True)
    g = telemetry(3, optimizer="adam", balance=1.0, heat=False, noisy_gradient=False)
    history = [
        {**{f"d_{k}": v for k, v in a.items()}, **{f"g_{k}": v for k, v in b.items()}}
        for a, b in zip(d, g + g[-1:] * 5, strict=True)
    ]
    page = get_page(client, add_job("gan", trained("adam"), history))
    assert [(b[0], b[1], b[3]) for b in badges(page)] == [
        ("d_equilibrium", "in", "d: in equilibrium"),
        ("g_equilibrium", "unknown", "g: equilibrium untested"),
    ]
    shown = hidden(page)
    assert shown["d_heat"].endswith(telemetry_notes.NULL_REASONS["heat"])
    assert shown["g_equilibrium"].endswith(telemetry_notes.NULL_REASONS["equilibrium"])
    assert latest_rows(page)["d_grad_noise_scale"][0].startswith("≥ ")


def test_a_job_without_telemetry(client: TestClient) -> None:
    """A simulation: nothing hidden while every metric has values; a null-only metric gets the
    plain reason, and no badge."""
    history: list[dict[str, float | None]] = [
        {"temperature": 100.0 - k, "<img src=x onerror=alert(1)>": None, "equilibrium": None}
        for k in range(3)
    ]
    page = get_page(client, add_job("cooling", {"params": {}}, history))
    shown = hidden(page)
    assert set(shown) == {"<img src=x onerror=alert(1)>", "equilibrium"}
    assert "<img src=x" not in page  # escaped everywhere, the page data too
    assert shown["equilibrium"] == (
        f"Every point of it so far is null for this cooling job: {telemetry_notes.OTHER_REASON}"
    )
    assert badges(page) == []
    assert '<p class="equilibria" id="equilibria"></p>' in page
    assert page_data(page)["notes"]["trained"] is False
    everything_defined = add_job("cooling", {"params": {}}, [{"temperature": 1.0}])
    page = get_page(client, everything_defined)
    assert hidden(page) == {} and '<div id="undefined" hidden>' in page
