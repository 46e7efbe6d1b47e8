"""Private Redis and PostgreSQL servers for the fault tests and the load benchmark.

Each server listens on 127.0.0.1 on a free port, keeps its state in a directory of its own and
is stopped (and its directory removed) by `close()`. The machine's shared servers (5432, 6379)
are never touched: the tests stop, restart and wipe these private instances instead.

PostgreSQL refuses to run as root: as root, `initdb`, `pg_ctl` and the server run as the
`postgres` OS user (via `runuser`) in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


class RedisServer:
    """`redis-server` without persistence: a restart loses every message, as a crash would."""

    def __init__(self, port: int | None = None, folder: Path | None = None) -> None:
        self.port = port or free_port()
        self.folder = Path(folder or tempfile.mkdtemp(prefix="thermoml-redis-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> RedisServer:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on the PATH")
        self.starts += 1
        log = (self.folder / f"redis-{self.starts}.log").open("wb")
        # No RDB snapshots, no append-only file: the server's data lives in memory only.
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait(self._ready, 20, f"redis-server on port {self.port}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, *, kill: bool = True) -> None:
        """Stop the server; with `kill` (SIGKILL), as a crash: nothing is written anywhere."""
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            self.process.wait(20)
        self.process = None
        _wait(lambda: not port_open(self.port), 10, f"port {self.port} to close")

    def restart_empty(self) -> None:
        """Stop the server and start a fresh one on the same port: every message is gone."""
        self.stop(kill=True)
        self.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(kill=True)
        shutil.rmtree(self.folder, ignore_errors=True)


class PostgresServer:
    """A private PostgreSQL cluster (`initdb` + `pg_ctl`), trust authentication on 127.0.0.1."""

    def __init__(self, port: int | None = None, database: str = "thermoml") -> None:
        self.port = port or free_port()
        self.database = database
        self.bindir = Path(
            subprocess.run(
                ["pg_config", "--bindir"], check=True, capture_output=True, text=True
            ).stdout.strip()
        )
        # Not under pytest's tmp_path: that is private to root, and the server may not run as
        # root. A fresh directory under /tmp that the server's user owns.
        self.root = Path(tempfile.mkdtemp(prefix="thermoml-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{self.database}"

    def _run(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        # Output to a file, never a pipe: a server started by `pg_ctl` inherits its descriptors,
        # and a pipe held open by the server would never reach end-of-file.
        with tempfile.TemporaryFile() as out:
            done = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=self.root
            )
            out.seek(0)
            text = out.read().decode(errors="replace")
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}): {text}\n{self.server_log()[-2000:]}"
            )
        return text

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> PostgresServer:
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
            self._first_start = True
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={HOST} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")
        self.running = True
        self._wait_accepting()
        if getattr(self, "_first_start", False):
            self._first_start = False
            import psycopg

            admin = f"postgresql://postgres@{HOST}:{self.port}/postgres"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def _wait_accepting(self, timeout: float = 30) -> None:
        def ready() -> bool:
            out = self._run("pg_isready", "-h", HOST, "-p", str(self.port), check=False)
            return "accepting connections" in out

        _wait(ready, timeout, f"PostgreSQL on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: disconnect every client and shut down cleanly; `immediate`: as a crash."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-l", str(self.log), "-w", "restart")
        self.running = True
        self._wait_accepting()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# --- the service on top of them ------------------------------------------------------------

THERMOML = str(Path(sys.executable).with_name("thermoml"))
TERMINAL = ("succeeded", "failed", "cancelled")


def fast_recovery_env() -> dict[str, str]:
    """Short leases and reconciler intervals, so that recovery takes seconds, not minutes."""
    return {
        "THERMOML_JOB_LEASE": "3",
        "THERMOML_REPUBLISH_INTERVAL": "0.5",
        "THERMOML_LOST_MESSAGE_GRACE": "1",
        "THERMOML_PUBLISH_TIMEOUT": "1",
        "THERMOML_MAX_ATTEMPTS": "3",
    }


class Stack:
    """`thermoml api` and `thermoml worker` processes over a private Redis and PostgreSQL."""

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(folder=Path(tempfile.mkdtemp(prefix="thermoml-redis-")))
        self.postgres = PostgresServer()
        self.api_port = free_port()
        self.extra_env = dict(env or {})
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "THERMOML_DATABASE_URL": self.postgres.url,
            "THERMOML_BROKER_URL": self.redis.url,
            # API and workers share the data directory, so the file:// artifact store too.
            "THERMOML_DATA_DIR": str(self.folder / "state"),
            **fast_recovery_env(),
            **self.extra_env,
        }

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        log = self.folder / f"{name}.log"
        self._logs.append(log)
        return subprocess.Popen(
            [THERMOML, *args],
            env={**os.environ, **self.env},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches pool and job processes
        )

    def start(self, *, worker: bool = True) -> Stack:
        self.redis.start()
        self.postgres.start()
        from migrations import upgrade

        upgrade(self.postgres.url)
        self.start_api()
        if worker:
            self.start_worker()
        return self

    def start_api(self) -> None:
        self.api = self._spawn(["api", "--port", str(self.api_port)], "api")

        def ready() -> bool:
            if self.api is not None and self.api.poll() is not None:
                raise RuntimeError(f"the API exited:\n{self.tail('api')}")
            try:
                return httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(ready, 60, "the API to be ready")

    def start_worker(
        self, name: str | None = None, concurrency: int = 1
    ) -> subprocess.Popen[bytes]:
        name = name or f"worker-{len(self.workers) + 1}"
        args = ["worker", "--queues", "cpu", "--concurrency", str(concurrency)]
        worker = self._spawn([*args, "--loglevel", "info"], name)
        self.workers.append(worker)
        log = self.folder / f"{name}.log"
        # Ready when Celery says so (it consumes from then on).
        _wait(lambda: b" ready." in log.read_bytes(), 60, f"{name} to be ready")
        return worker

    def kill_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker's whole process group: main, pool and job processes at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)

    def client(self, timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def tail(self, name: str, chars: int = 4000) -> str:
        try:
            return (self.folder / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def dump_logs(self) -> None:
        for log in dict.fromkeys(self._logs):
            print(f"----- {log.name} (tail) -----")
            print(self.tail(log.stem))

    def close(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                with contextlib.suppress(Exception):
                    self.kill_worker(worker)
        if self.api is not None and self.api.poll() is None:
            self.api.terminate()
            try:
                self.api.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.api.pid, signal.SIGKILL)
                self.api.wait()
        self.postgres.close()
        self.redis.close()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first, then theirs), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        children = [c for p in frontier for c in parents.get(p, [])]
        found.extend(children)
        frontier = children
    return found


def wait_until(check: Any, timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `check` until it returns something true; its value. HTTP errors count as no."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


# --- what every scenario checks and records -----------------------------------------------


def record(scenario: str, outcome: dict[str, Any]) -> None:
    """Merge one scenario's numbers into bench/results/faults.json (and print them)."""
    from bench.common import RESULTS, write_report

    print(f"[fault scenario] {scenario}: {json.dumps(outcome)}")
    path = RESULTS / "faults.json"
    scenarios: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, KeyError):
        scenarios = json.loads(path.read_text())["scenarios"]
    scenarios[scenario] = {**outcome, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_report("faults", {"scenarios": scenarios})


def job_row(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job's row straight from the database (what the API does not show: the checkpoint)."""
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(stack.postgres.dsn, row_factory=dict_row) as conn:
        row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None, job_id
    return row


def wait_terminal(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict]:
    """Every job's final state; fails naming the jobs still unfinished after `timeout`."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict] = {}
    while time.monotonic() < deadline and len(done) < len(ids):
        for job_id in ids:
            if job_id in done:
                continue
            with contextlib.suppress(httpx.HTTPError):
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job.get("status") in TERMINAL:
                    done[job_id] = job
        time.sleep(0.25)
    missing = [i for i in ids if i not in done]
    assert not missing, f"{len(missing)} jobs did not end within {timeout} s: {missing}"
    return done


def history(client: httpx.Client, job_id: str) -> dict[str, dict[str, list]]:
    response = client.get(f"/v1/jobs/{job_id}/metrics")
    assert response.status_code == 200, response.text
    return response.json()["series"]  # type: ignore[no-any-return]


def check_series_unique(job_id: str, series: dict[str, dict[str, list]]) -> None:
    """No metric has a step twice, and steps come in order."""
    for name, points in series.items():
        steps = points["steps"]
        assert len(steps) == len(points["values"]), (job_id, name)
        assert steps == sorted(set(steps)), f"job {job_id}: {name} has repeated steps"


def check_training_history(job_id: str, series: dict[str, dict[str, list]], epochs: int) -> None:
    """Epochs 1..N each exactly once, and one `loss` point at each epoch's step."""
    check_series_unique(job_id, series)
    epoch = series["epoch"]
    assert epoch["values"] == [float(e) for e in range(1, epochs + 1)], (job_id, epoch)
    assert series["loss"]["steps"] == epoch["steps"], (job_id, series["loss"], epoch)
    assert all(v is not None for v in series["loss"]["values"]), (job_id, series["loss"])
