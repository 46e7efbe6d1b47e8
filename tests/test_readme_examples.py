"""Every runnable example in README.md, run as a reader would: the curl blocks in bash and the
Python blocks in a fresh interpreter, against a live server (uvicorn in a thread; jobs run as
they are submitted). A block that cannot run here is named in SKIPPED with the reason, so a new
example is either run or knowingly left out."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.service.test_client_cli import Server, server  # noqa: F401

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SKIPPED = {
    "python3.11 -m venv": "installs thermoml: CI's own install is this line",
    "thermoml keys create": "needs the server's database from a shell; tests/security covers it",
    "export THERMOML_DATABASE_URL": "production topology: PostgreSQL, Redis and hosts of its own",
}
pytestmark = pytest.mark.timeout(600)


def blocks() -> list[tuple[str, str]]:
    """(language, text) of the README's bash and python blocks, in order."""
    found = [(m[1], m[2]) for m in FENCE.finditer(README.read_text())]
    return [(lang, text) for lang, text in found if lang in ("bash", "python")]


def skipped(text: str) -> bool:
    return any(start in text for start in SKIPPED)


def bash_commands(text: str) -> list[str]:
    """The block's commands, continuation lines joined; comments and blank lines dropped."""
    commands: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line + "\n"
        if line.rstrip().endswith("\\") or current.count("'") % 2:
            continue
        commands.append(current)
        current = ""
    return commands


def run_bash(block: str, url: str, folder: Path) -> None:
    """Each command in bash with `localhost:8000` pointing at the test server; a placeholder
    `JOB=…` takes the id of the job the previous command answered with."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    last = ""
    job = ""
    for command in bash_commands(block):
        if re.match(r"JOB=\S*…", command):
            job = json.loads(last)["id"]
            continue
        command = command.replace("localhost:8000", url.removeprefix("http://"))
        command = command.replace("$JOB", job).replace("python -c", f"{sys.executable} -c")
        done = subprocess.run(
            [
                "bash",
                "-c",
                'set -o pipefail; curl() { command curl --fail-with-body "$@"; }; ' + command,
            ],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        last = done.stdout or last


def run_python(block: str, url: str, folder: Path) -> None:
    code = block.replace("http://localhost:8000", url).replace("http://127.0.0.1:8000", url)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{code}\n{done.stdout}\n{done.stderr}"


def test_the_readme_has_examples_and_knows_which_it_skips() -> None:
    found = blocks()
    assert len([b for b in found if not skipped(b[1])]) >= 4
    for start in SKIPPED:
        assert any(start in text for _, text in found), f"stale skip: {start}"


def test_every_readme_example_runs(server: Server, tmp_path: Path) -> None:  # noqa: F811
    rows = np.random.default_rng(0).normal(size=(8, 30)) * 5 + 20
    np.savetxt(tmp_path / "rows.csv", rows, delimiter=",")
    ran = 0
    for lang, text in blocks():
        if skipped(text):
            continue
        (run_bash if lang == "bash" else run_python)(text, server.url, tmp_path)
        ran += 1
    assert ran >= 4
    scores = np.load(tmp_path / "scores.npy", allow_pickle=False)
    assert scores.shape == (8,)
    assert len((tmp_path / "cooling.csv").read_text().splitlines()) > 10
