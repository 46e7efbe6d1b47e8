"""Architecture rules: dependency direction, and TensorFlow kept out of start-up paths."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "ml": {"service", "workers", "fastapi", "celery", "sqlalchemy"},
    "service": {"workers"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
        if imported_roots(path) & FORBIDDEN[package]
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "code",
    [
        "from service.main import create_app; app = create_app(); app.openapi()",
        "import workers.app",
        "import service.cli",
    ],
)
def test_tensorflow_is_not_imported_at_start_up(code: str, tmp_path: Path) -> None:
    probe = f"{code}; import sys; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    env = {"THERMOML_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_required_top_level_exists() -> None:
    for name in (
        "pyproject.toml",
        "service",
        "workers",
        "migrations",
        "tests",
        "ml",
        "bench",
        "README.md",
        ".ci/run",
        "docker-compose.yml",
    ):
        assert (ROOT / name).exists(), name
