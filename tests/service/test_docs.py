"""/docs works offline: Swagger UI's files come from thermoml, not from a CDN."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_docs_page_loads_only_local_assets(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"(src|href)=['\"]https?://", page.text)
    for asset in re.findall(r"['\"](/docs/assets/[^'\"]+)['\"]", page.text):
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000
    assert client.get("/openapi.json").json()["openapi"].startswith("3.")
