"""The job page's telemetry notes follow the event stream in a real headless Chromium: a metric
that gets its first finite point leaves the list of undefined ones for the latest values, a new
null-only metric joins that list with its reason, the equilibrium badge changes state with its
statistic, and `grad_noise_scale` turns into a bound; as the server renders them on a reload."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from service.config import Settings
from service.db import metrics as metric_repo
from service.telemetry_notes import BOUND_TITLE, NULL_REASONS, OTHER_REASON
from tests.conftest import RecordingPublisher, served
from tests.integration.test_dashboard_browser import DevTools, chromium  # noqa: F401
from tests.service.test_dashboard_job import add_job, telemetry, trained
from workers import runtime


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    from service.main import create_app

    app = create_app(settings.model_copy(update={"events_poll_interval": 0.05}), reconcile=False)
    app.state.publisher = RecordingPublisher(run_inline=False)
    with served(app) as url:
        yield url


def notes(chromium: DevTools) -> dict[str, Any]:  # noqa: F811
    return chromium.evaluate(
        """(() => {
          const badge = document.querySelector('#equilibria .badge[data-name="equilibrium"]');
          const scale = document.querySelector(
            '#latest tr[data-name="grad_noise_scale"] td:last-child');
          return {
            hidden: Object.fromEntries([...document.querySelectorAll('#hidden-metrics li')]
              .map((li) => [li.dataset.name, li.title])),
            rows: [...document.querySelectorAll('#latest tbody tr')].map((tr) => tr.dataset.name),
            badge: badge && [badge.className, badge.textContent, badge.title],
            scale: scale && [scale.textContent, scale.title],
            undefinedShown: !document.getElementById('undefined').hidden,
          };
        })()"""
    )


@pytest.mark.integration
def test_the_notes_follow_the_job_live(chromium: DevTools, server: str) -> None:  # noqa: F811
    history = telemetry(8, optimizer="adam", balance=1.0, heat=False, noisy_gradient=True)
    assert history[2]["equilibrium"] is None and history[-1]["equilibrium"] == 1.0
    job_id = add_job("autoencoder", trained("adam"), history[:3])
    chromium.open(f"{server}/jobs/{job_id}")
    chromium.wait_for(
        "document.getElementById('live').classList.contains('on')", 30, "the event stream"
    )
    before = notes(chromium)
    assert {"equilibrium", "equilibrium_statistic", "heat"} <= set(before["hidden"])
    assert before["badge"][1] == "equilibrium untested"

    with runtime.sessions().begin() as session:
        points = [
            (name, 10 * (k + 1), math.nan if value is None else value)
            for k, values in enumerate(history[3:], start=3)
            for name, value in values.items()
        ]
        points.append(("mystery", 80, math.nan))
        metric_repo.upsert(session, job_id=job_id, points=points)
    chromium.wait_for(
        "document.querySelector('#equilibria .equilibrium-in') !== null", 30, "the badge"
    )
    chromium.wait_for(
        "document.querySelector('#hidden-metrics li[data-name=\"mystery\"]') !== null",
        10,
        "the new undefined metric",
    )
    after = notes(chromium)
    statistic = history[-1]["equilibrium_statistic"]
    assert statistic is not None
    class_name, label, title = after["badge"]
    assert (class_name, label) == ("badge equilibrium equilibrium-in", "in equilibrium")
    assert title.startswith("equilibrium_statistic t = ") and " at step 80. " in title
    assert float(title.split(" ")[3]) == pytest.approx(statistic, rel=1e-5)
    hidden = after["hidden"]
    assert isinstance(hidden, dict)
    assert "equilibrium" not in hidden and "equilibrium_statistic" not in hidden
    assert hidden["heat"].endswith(NULL_REASONS["heat"])
    assert hidden["mystery"].endswith(OTHER_REASON)
    assert "equilibrium" in after["rows"]
    assert after["rows"] == sorted(after["rows"])
    assert after["scale"][0].startswith("≥ ") and after["scale"][1] == BOUND_TITLE

    # The server renders the same page on a reload.
    chromium.open(f"{server}/jobs/{job_id}")
    reloaded = notes(chromium)
    assert reloaded["hidden"] == after["hidden"]
    assert reloaded["rows"] == after["rows"]
    assert reloaded["badge"][:2] == after["badge"][:2]
    assert reloaded["scale"][1] == BOUND_TITLE
    chromium.open("about:blank")  # closes the event stream before the server stops
