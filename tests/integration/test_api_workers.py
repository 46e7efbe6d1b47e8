"""`thermoml api --workers N`: N processes on one port, one dying leaves the others serving,
SIGTERM stops them all within the shutdown grace; and one reconciler among them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.queue import Publisher
from service.reconciler import Reconciler
from tests.conftest import free_port
from tests.integration.helpers import THERMOML, start, stop, wait_for

pytestmark = pytest.mark.integration
GRACE_S = 3.0


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def test_n_api_processes_share_a_port_and_survive_one_dying(tmp_path: Path) -> None:
    env = {
        "THERMOML_DATA_DIR": str(tmp_path / "state"),
        "THERMOML_SHUTDOWN_GRACE": str(GRACE_S),
    }
    subprocess.run([THERMOML, "migrate"], env={**os.environ, **env}, check=True)
    port = free_port()
    api = start(["api", "--workers", "2", "--port", str(port)], env, tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=5) as client:
            wait_for(lambda: client.get("/healthz").status_code == 200, 60, "the API")
            workers = wait_for(lambda: len(children(api.pid)) >= 2 and children(api.pid), 30, "2")
            os.kill(workers[0], signal.SIGKILL)
            for _ in range(20):  # the other process answers while the first is replaced
                assert client.get("/healthz").status_code == 200
                assert client.get("/v1/jobs").status_code == 200
                time.sleep(0.05)
        started = time.monotonic()
        assert stop(api, timeout=GRACE_S + 15) == 0
        assert time.monotonic() - started < GRACE_S + 15
    finally:
        stop(api, sig=signal.SIGKILL)
        print((tmp_path / "api.log").read_text()[-3000:])


def test_one_reconciler_per_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first, second = (Reconciler(None, Publisher(settings), settings) for _ in range(2))  # type: ignore[arg-type]
    assert first.holds_lock()
    assert not second.holds_lock()
    first.stop()  # its process ends: the lock is free
    assert second.holds_lock()
    second.stop()
