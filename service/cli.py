"""The `thermoml` command: up | api | worker | migrate | keys (and the HTTP client commands)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from service.client_cli import add_client_commands
from service.config import Settings, get_settings

log = logging.getLogger("thermoml")


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


def cmd_api(args: argparse.Namespace) -> int:
    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    _serve(settings, host, port, workers=args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Become `celery -A workers.app worker` (so the service never imports `workers`)."""
    queues = ",".join(q.strip() for q in args.queues.split(",") if q.strip())
    unknown = set(queues.split(",")) - {"cpu", "gpu"}
    if unknown:
        print(f"unknown queue(s) {', '.join(sorted(unknown))}; use cpu, gpu", file=sys.stderr)
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
        f"thermoml-{queues.replace(',', '-')}-{os.getpid()}@%h",
        "--loglevel",
        args.loglevel,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def cmd_up(args: argparse.Namespace) -> int:
    settings = get_settings()
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"data_dir": data_dir})
    _migrate(settings)
    host = args.host or settings.host
    port = args.port or settings.port
    env = {
        **os.environ,
        "THERMOML_DATA_DIR": str(data_dir),
        "THERMOML_PARENT_PID": str(os.getpid()),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--queues", "cpu,gpu"],
        env=env,
        start_new_session=True,  # Ctrl-C reaches the launcher, which stops the worker in order
    )
    banner = (
        f"thermoml is up: API http://{host}:{port}  docs http://{host}:{port}/docs\n"
        f"  auth: {settings.auth}; state under {data_dir}; one worker (pid {worker.pid}) "
        "on queues cpu,gpu. Ctrl-C stops both."
    )
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        _serve(settings, host, port, banner=banner)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_worker(worker)
    return 0


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """Warm shutdown, then cold, then kill the worker's whole process group."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGQUIT, 5.0)):
        if worker.poll() is not None:
            break
        try:
            os.killpg(worker.pid, sig)
            worker.wait(timeout=wait)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
        os.killpg(worker.pid, signal.SIGKILL)
    print("thermoml stopped", flush=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thermoml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="API + one worker, SQLite and a file broker under ./.thermoml")
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
