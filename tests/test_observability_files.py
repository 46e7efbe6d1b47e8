"""docker-compose's Prometheus and Grafana agree with thermoml: the scrape reaches the API's
/metrics, Grafana finds its data source and dashboard, and every metric the dashboard queries is
one that `GET /metrics` exports. No Docker needed: the files are parsed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import prom

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "le", "without"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load(ROOT / "docker-compose.yml")["services"]  # type: ignore[no-any-return]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts."""
    found = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        found[target] = source
    return found


def host(path: str) -> Path:
    return (ROOT / path).resolve()


def test_prometheus_scrapes_the_api(services: dict[str, Any]) -> None:
    prometheus = services["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    config = load(host(mounts(prometheus)[config_path]))
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    name, port = target.split(":")
    assert name == "api" and name in services
    assert f":{port}/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert prometheus["depends_on"]["api"]


def test_grafana_provisions_the_data_source_and_the_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    volumes = mounts(grafana)
    provisioning = host(volumes["/etc/grafana/provisioning"])
    (source,) = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    (provider,) = load(provisioning / "dashboards" / "thermoml.yml")["providers"]
    folder = host(volumes[provider["options"]["path"]])
    dashboard = json.loads((folder / "thermoml.json").read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]


def exported(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Family names of a scrape, with the broker's answers stubbed (it is not running here)."""
    monkeypatch.setattr(prom, "queue_depths", lambda settings: {"cpu": 0, "gpu": 0})
    monkeypatch.setattr(prom, "live_workers", lambda settings: [])
    text = client.get("/metrics").text
    return {family.name for family in text_string_to_metric_families(text)}


def test_every_dashboard_metric_is_exported(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = exported(client, monkeypatch)
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "thermoml.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", target["expr"])
            queried |= {w for w in re.findall(r"[a-z_][a-z0-9_]*", expr) if "_" in w}
    queried -= PROMQL_WORDS
    assert {"thermoml_jobs", "thermoml_queue_depth"} <= queried
    for metric in queried:
        base = next((metric[: -len(s)] for s in SUFFIXES if metric.endswith(s)), metric)
        assert metric in names or base in names, f"the dashboard queries {metric}, not exported"
