"""Per-process database handles for the worker's processes.

The engine is made and warmed (dialect initialised, hot statements compiled) in the pool
process; each job process keeps that engine but opens its own connections after the fork.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from service import jobs as lifecycle
from service.config import get_settings
from service.db.session import make_engine, make_sessionmaker
from service.queue import Publisher

_engine: Engine | None = None
_sessions: sessionmaker[Session] | None = None
_publisher: Publisher | None = None


def sessions() -> sessionmaker[Session]:
    global _engine, _sessions
    if _sessions is None:
        _engine = make_engine(get_settings().resolved_database_url)
        _sessions = make_sessionmaker(_engine)
    return _sessions


def work_folder(job_id: str, pid: int) -> Path:
    """Where the job process `pid` keeps its files while it works on the job: under the data
    dir, so that its worker removes them when the process ends, even killed."""
    return (get_settings().data_dir / "work" / job_id / str(pid)).resolve()


def remove_abandoned_work(job_id: str) -> None:
    """Remove what earlier attempts at the job on this host left: folders of processes gone."""
    root = get_settings().data_dir / "work" / job_id
    for folder in root.glob("*"):
        if folder.name.isdigit() and not _alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publisher() -> Publisher:
    """Publishes jobs from the worker (a killed job's requeue), over the same broker settings."""
    global _publisher
    if _publisher is None:
        _publisher = Publisher(get_settings())
    return _publisher


def after_fork() -> None:
    """Drop connections inherited over a fork (they belong to the parent); keep the engine."""
    if _engine is not None:
        _engine.dispose(close=False)


def reset() -> None:
    """Forget the engine entirely (tests, or a change of settings)."""
    global _engine, _sessions, _publisher
    after_fork()
    if _publisher is not None:
        _publisher.close()
    _engine, _sessions, _publisher = None, None, None


def warm() -> None:
    """Connect and compile the claim statements once, so forked job processes start hot."""
    with sessions().begin() as session:
        session.execute(text("SELECT 1"))
        lifecycle.claim(session, job_id="warm-up", worker="", lease_s=1.0, max_attempts=1)
