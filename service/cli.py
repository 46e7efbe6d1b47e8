"""The `thermoml` command: up | api | worker | migrate | keys (and the HTTP client commands)."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from service.client_cli import add_client_commands
from service.config import Settings, get_settings

log = logging.getLogger("thermoml")

EXIT_CODES = """exit codes:
  0    done (a waited-for job succeeded)
  1    the job failed or was cancelled, or the server refused the request (its message is shown)
  2    the command line is wrong
  130  interrupted (Ctrl-C); a submitted job goes on
"""


def _migrate(settings: Settings) -> str:
    from migrations import upgrade

    url = settings.resolved_database_url
    upgrade(url)
    return url


def cmd_migrate(args: argparse.Namespace) -> int:
    url = _migrate(get_settings())
    print(f"database schema is at the latest revision ({_redact(url)})")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _serve(
    settings: Settings, host: str, port: int, *, banner: str | None = None, workers: int = 1
) -> None:
    """Serve the API; with `workers` > 1, that many processes on one port (uvicorn restarts
    one that dies, and each makes its app from the environment's settings). On SIGTERM, open
    requests get `shutdown_grace` seconds to finish."""
    import uvicorn

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown_grace,
    }
    if banner:
        print(banner, flush=True)
    if workers > 1:
        uvicorn.run("service.main:create_app", factory=True, workers=workers, **options)
        return
    from service.main import create_app

    uvicorn.Server(uvicorn.Config(create_app(settings), **options)).run()


def _no_broker(settings: Settings, command: str) -> bool:
    """`thermoml api` or `worker` with no THERMOML_BROKER_URL joins the Redis of a `thermoml up`
    running on the same data dir; with none running, say so (True)."""
    if not settings.embedded_broker:
        return False
    from service.embedded_redis import socket_path

    if socket_path(settings.data_dir).exists():
        return False
    print(
        f"thermoml {command}: THERMOML_BROKER_URL is not set and no `thermoml up` is running on "
        f"the data dir {settings.data_dir.resolve()}. Set THERMOML_BROKER_URL=redis://host:6379/0 "
        "(with THERMOML_DATABASE_URL), or run `thermoml up` (API, worker and broker in one).",
        file=sys.stderr,
    )
    return True


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the API. Without a broker it still serves reads, models and uploads; jobs it
    accepts stay queued (and /readyz says the broker is down) until one is reachable."""
    settings = get_settings()
    if _no_broker(settings, "api"):
        print("thermoml api: no broker yet; accepted jobs stay queued", file=sys.stderr)
    host, port = args.host or settings.host, args.port or settings.port
    _serve(settings, host, port, workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Become `celery -A workers.app worker` (so the service never imports `workers`)."""
    from service.supervisor import worker_name

    queues = ",".join(q.strip() for q in args.queues.split(",") if q.strip())
    unknown = set(queues.split(",")) - {"cpu", "gpu"}
    if unknown:
        print(f"unknown queue(s) {', '.join(sorted(unknown))}; use cpu, gpu", file=sys.stderr)
        return 2
    if _no_broker(get_settings(), "worker"):
        return 2
    argv = [
        sys.executable,
        "-m",
        "celery",
        "--app",
        "workers.app",
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(args.concurrency),
        "--hostname",
        worker_name(queues, os.getpid()),
        "--loglevel",
        args.loglevel,
        # No gossip or mingle: workers need not hear from each other. Event heartbeats stay on:
        # Flower and `celery events` count live workers by them.
        "--without-gossip",
        "--without-mingle",
    ]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def cmd_up(args: argparse.Namespace) -> int:
    from service.embedded_redis import EmbeddedRedis, EmbeddedRedisError
    from service.supervisor import WorkerSupervisor

    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(data_dir)
    if lock is None:
        return 2
    redis = EmbeddedRedis(data_dir)
    try:
        broker = settings.broker_url or redis.start()
    except EmbeddedRedisError as exc:
        print(f"thermoml up: {exc}", file=sys.stderr)
        return 1
    settings = settings.model_copy(update={"data_dir": data_dir, "broker_url": broker})
    os.environ["THERMOML_BROKER_URL"] = broker  # the API's job processes, and the worker
    get_settings.cache_clear()
    host = args.host or settings.host
    port = args.port or settings.port
    env = {
        **os.environ,
        "THERMOML_DATA_DIR": str(data_dir),
        "THERMOML_PARENT_PID": str(os.getpid()),
    }
    supervisor = WorkerSupervisor(settings, env)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        _migrate(settings)
        pid = supervisor.start()
        where = "on a Unix socket" if broker == redis.url else "given"
        banner = (
            f"thermoml is up: API http://{host}:{port}  docs http://{host}:{port}/docs\n"
            f"  auth: {settings.auth}; state under {data_dir}; broker {broker} ({where});\n"
            f"  one worker (pid {pid}) on queues cpu,gpu, restarted if it exits. "
            "Ctrl-C stops everything."
        )
        _serve(settings, host, port, banner=banner)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the stop
        supervisor.stop()
        redis.stop()
        signal.signal(signal.SIGTERM, previous)
        lock.close()
        print("thermoml stopped", flush=True)
    return 0


def _lock_data_dir(data_dir: Path) -> IO[bytes] | None:
    """One `thermoml up` per data dir (they would share one Redis and one worker's files)."""
    handle = (data_dir / "up.lock").open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        print(f"thermoml up: another `thermoml up` is running on {data_dir}", file=sys.stderr)
        return None
    return handle


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from thermoml import __version__

    parser = argparse.ArgumentParser(prog="thermoml", description=__doc__, epilog=EXIT_CODES)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--version", action="version", version=f"thermoml {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also log what the libraries do (HTTP calls)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="API + a watched worker, SQLite and a private Redis under ./.thermoml"
    )
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.set_defaults(func=cmd_up)

    api = sub.add_parser("api", help="the HTTP API alone (THERMOML_DATABASE_URL, _BROKER_URL)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="API processes on the one port (default 1): a crashed or saturated one leaves "
        "the others serving",
    )
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="a Celery worker consuming the given queues")
    worker.add_argument("--queues", default="cpu", help="comma-separated: cpu, gpu (default cpu)")
    worker.add_argument("--concurrency", type=int, default=1, help="jobs at once (default 1)")
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    migrate.set_defaults(func=cmd_migrate)
    add_client_commands(sub)

    from service.keys_cli import add_key_commands

    add_key_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    # httpx logs every request at INFO, which would draw lines through a progress bar.
    quiet = not getattr(args, "verbose", False)
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
