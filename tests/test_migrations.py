"""Alembic alone makes the schema: up, down, up again, and no drift, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from migrations import downgrade, upgrade
from service.db import tables  # noqa: F401
from service.db.base import Base
from tests.pg import scratch_database

TABLES = {"jobs", "metric_points", "models", "datasets", "api_keys"}


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
