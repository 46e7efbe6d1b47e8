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


# --- house rules: small modules and functions, no import cycles, one home for job state

CODE = ("ml", "service", "workers")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _listing(items: object) -> str:
    return "\n" + "\n".join(str(item) for item in items)  # type: ignore[attr-defined]


def code_files() -> list[Path]:
    return sorted(p for package in CODE for p in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (inside functions too)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known and name != here}


def test_no_import_cycles() -> None:
    files = {module_name(p): p for p in code_files()}
    known = set(files)
    graph = {name: imported_modules(path, known) for name, path in files.items()}
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert cycles == [], _listing(cycles)


def test_modules_are_small() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in code_files()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, _listing(long.items())


def test_functions_are_short() -> None:
    long = {}
    for path in code_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert long == {}, _listing(long.items())


def _names_kind(node: ast.expr) -> bool:
    """A job kind's name (not a NumPy dtype's `kind` letter)."""
    if isinstance(node, ast.Attribute) and ast.unparse(node.value).endswith("dtype"):
        return False
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return name == "kind" or name.endswith("_kind") or name == "kind_name"


def test_nothing_branches_on_a_kind_name() -> None:
    """Differences between kinds are attributes of the kind, never `if kind == "vae"`."""
    offenders = []
    for path in code_files():
        if path == ROOT / "ml" / "core" / "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                literal = any(
                    isinstance(s, ast.Constant | ast.Tuple | ast.Set | ast.List) for s in sides
                )
                if literal and any(_names_kind(s) for s in sides):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], _listing(offenders)


JOB_STATE_FIELDS = {"status", "published_at", "queue", "priority"}


def test_only_the_lifecycle_writes_job_state() -> None:
    """`service/jobs.py` alone inserts job rows and updates their status or publish fields."""
    home = ROOT / "service" / "jobs.py"
    offenders = []
    for path in code_files():
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"update", "insert", "Job"}
                and (node.func.id == "Job" or (node.args and ast.unparse(node.args[0]) == "Job"))
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and node.attr in JOB_STATE_FIELDS
                and "job" in ast.unparse(node.value).lower()
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
            value = node.value if isinstance(node, ast.Constant) else None
            text = value.lower() if isinstance(value, str) else ""
            if "update jobs" in text or "insert into jobs" in text:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} raw SQL")
    assert offenders == [], _listing(offenders)
