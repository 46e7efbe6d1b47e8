"""Alembic alone makes the schema: up, down, up again, and no drift, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from migrations import downgrade, upgrade
from service.db import tables  # noqa: F401
from service.db.base import Base
from tests.pg import scratch_database

TABLES = {"jobs", "metric_points", "models", "datasets", "api_keys", "sessions"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
    else:
        with scratch_database() as url:
            yield url


def drift(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_without_drift(database_url: str) -> None:
    upgrade(database_url)
    assert table_names(database_url) == TABLES
    assert drift(database_url) == []
    downgrade(database_url)
    assert table_names(database_url) == set()
    upgrade(database_url)
    assert table_names(database_url) == TABLES
    assert drift(database_url) == []


def test_metric_points_are_unique_and_indexed_per_job_series(database_url: str) -> None:
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        uniques = inspect(engine).get_unique_constraints("metric_points")
    finally:
        engine.dispose()
    assert {"job_id", "name", "step"} == set(uniques[0]["column_names"])
    assert uniques[0]["column_names"][0] == "job_id"  # leads, so it serves one job's series


def test_tenants_fill_default_into_old_rows_and_names_are_unique_per_tenant(
    database_url: str,
) -> None:
    upgrade(database_url, "0003")
    engine = create_engine(database_url)
    row = {"kind": "vae", "sha": "0" * 64, "uri": "s3://m", "now": "2026-11-27 00:00:00"}
    insert_model = (
        "INSERT INTO models (id, name, version, kind, artifact_uri, sha256, input_shape, "
        "preprocessing, capabilities, pictures, calibration, evaluation, created_at{t}) VALUES "
        "(:id, 'cancer-ae', 1, :kind, :uri, :sha, '[]', '{{}}', '[]', '[]', '{{}}', '{{}}', "
        ":now{v})"
    )
    try:
        with engine.begin() as conn:
            conn.execute(text(insert_model.format(t="", v="")), {**row, "id": "old"})
        upgrade(database_url)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT tenant FROM models")).scalar_one() == "default"
            new_row = insert_model.format(t=", tenant", v=", :tenant")
            conn.execute(text(new_row), {**row, "id": "other", "tenant": "acme"})
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(new_row), {**row, "id": "again", "tenant": "acme"})
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM models WHERE tenant = 'acme'"))
        downgrade(database_url, "0003")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id FROM models")).scalar_one() == "old"
    finally:
        engine.dispose()
