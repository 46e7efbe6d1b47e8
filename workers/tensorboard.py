"""A job's metric points as TensorBoard event files, written while the job runs.

Where: each tenant has its own folder, and each job is a run in it named `<job name>-<short id>`
(the short id is the job id's first 8 hex digits; a job submitted without a name uses its kind,
`autoencoder-1a2b3c4d`): `<artifact root>/tensorboard/<tenant>/<run>/`. The name is made safe for a
folder and an object key (ASCII letters, digits, `.`, `_` and `-`; no `..`, no separators, at most
RUN_NAME_CHARS characters). `tensorboard --logdir <artifact root>/tensorboard/<tenant>` shows one
tenant's jobs and nothing of another's; `--logdir <artifact root>/tensorboard` shows every
tenant's, as runs `<tenant>/<run>`. No route of the API serves these files.

When: the worker's reporter hands each batch of points to :class:`EventWriter` right after the
database has stored them and confirmed that this attempt still owns the job (every report, or
every FLUSH_INTERVAL_S when reports come faster), and the writer appends them and flushes the file.
So the file never holds a point that the database does not, nor one from a worker that lost the
job, and TensorBoard sees the points as soon as the dashboard does.

Attempts: each attempt of a job writes its own file, `...thermoml-<job id>.<attempt>`, and never
rewrites another's (a TensorBoard that is reading a file keeps reading it). A resumed attempt
first reads the earlier attempts' files, then starts its own with the database's points that
those files lack (those an earlier attempt stored but did not get into its file before it died),
and from then on writes a metric's point only at a step after the last one written for that
metric. A resumed run records again the steps after its checkpoint: their points are already in
an earlier file, so they are not written twice (the database keeps the newer values).

Artifact stores: on a local store the file is the store's own file, appended in place. An
object store (`s3://`) cannot append, so the attempt writes its file in its local work folder
under the data directory and uploads the whole file at the first report, then at most every
REMOTE_UPLOAD_S, and when the attempt ends; a reader of the store sees the run at most
REMOTE_UPLOAD_S behind. If writing fails the job goes on; when it ends, its file is written
again from the database.

Metrics are scalars tagged `<group>/<name>` with the groups of the plots (energy, temperature,
entropy, ...), so TensorBoard shows related thermodynamic metrics side by side; points that are
not finite (stored as NULL) are left out, which TensorBoard draws as gaps anyway.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import tempfile
import time
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db import tenancy
from service.db.tables import Job, MetricPoint
from service.plots import GROUP_OF
from service.storage import ArtifactStore, check_key
from workers.event_codec import FILE_VERSION, event, read_events, scalar_value, tfrecord

log = logging.getLogger("thermoml.worker")

PREFIX = "tensorboard"
RUN_NAME_CHARS = 64
REMOTE_UPLOAD_S = 10.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SHORT_ID = re.compile(r"^[0-9a-f]{8}")

Point = tuple[str, int, float]  # name, step, value: as the reporter hands them over


def tag_of(name: str) -> str:
    group = GROUP_OF.get(name)
    return f"{group.key}/{name}" if group is not None else name


# --- where a run goes ---------------------------------------------------------------------------


def run_name(name: str | None, kind: str, job_id: str) -> str:
    """`<name>-<short id>`, the name made safe for a folder and an object key; the kind when the
    job has no name (or nothing of it is left)."""
    short = _SHORT_ID.match(job_id.lower())
    if short is None:
        raise ValueError(f"job id {job_id[:40]!r} does not start with 8 hex digits")

    def safe(text: str) -> str:
        ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        cleaned = re.sub(r"\.{2,}", ".", _UNSAFE.sub("-", ascii_text)).strip("._-")
        return cleaned[:RUN_NAME_CHARS].rstrip("._-")

    base = safe(name or "") or safe(kind) or "job"
    return f"{base}-{short.group(0)}"


def run_folder(tenant: str, run: str) -> str:
    """`<tenant>/<run>`: where a job's run goes under a log folder. The tenant's name is checked
    again here (it becomes a folder name): never a path that leaves its tenant's folder."""
    check_key(run)
    if "/" in run:
        raise ValueError(f"run {run!r} is not one folder")
    return f"{tenancy.check_name(tenant)}/{run}"


def event_file_name(job_id: str, created_at: dt.datetime, attempt: int) -> str:
    # TensorBoard finds files by "tfevents" in the name and reads a run's files in name order:
    # the attempts of one job share the timestamp (the job's) and sort by the padded attempt.
    return f"events.out.tfevents.{int(created_at.timestamp())}.thermoml-{job_id}.{attempt:03d}"


def _attempt_of(file_name: str, job_id: str) -> int | None:
    found = re.fullmatch(
        rf"events\.out\.tfevents\.\d+\.thermoml-{re.escape(job_id)}\.(\d+)", file_name
    )
    return int(found.group(1)) if found else None


# --- encoding -----------------------------------------------------------------------------------


def encode_steps(points: Sequence[tuple[str, int, float, float]]) -> bytes:
    """(name, step, value, wall time) as one event per step, steps ascending."""
    by_step: dict[int, list[bytes]] = defaultdict(list)
    wall: dict[int, float] = {}
    for name, step, value, wall_time in points:
        by_step[step].append(scalar_value(tag_of(name), value))
        wall[step] = max(wall.get(step, 0.0), wall_time)
    return b"".join(
        tfrecord(event(wall[step], step, values=by_step[step])) for step in sorted(by_step)
    )


def last_steps(data: bytes) -> dict[str, int]:
    """The last step of each tag in an event file (its intact frames)."""
    last: dict[str, int] = {}
    for item in read_events(data):
        for tag in item.scalars:
            last[tag] = max(last.get(tag, item.step), item.step)
    return last


# --- the running attempt's file -----------------------------------------------------------------


class EventWriter:
    """The event file of one attempt at one job; see the module docstring.

    `target` is the artifact store (its `tensorboard/` prefix) or a log folder; `staging` is a
    local folder for the file when the store is not a local file system. Nothing is read or
    written before the first points arrive. Errors are logged, never raised.
    """

    def __init__(
        self,
        job_id: str,
        *,
        attempt: int,
        sessions: sessionmaker[Session],
        target: ArtifactStore | Path,
        staging: Path,
    ) -> None:
        self.job_id, self.attempt, self.sessions = job_id, attempt, sessions
        self.store: ArtifactStore | None = None  # the store to upload to: not a local one
        self.named_by = target if isinstance(target, ArtifactStore) else None
        if isinstance(target, ArtifactStore) and not _local(target):
            self.store, self.logdir = target, staging
        elif isinstance(target, ArtifactStore):
            self.logdir = Path(target.root) / PREFIX
        else:
            self.logdir = Path(target)
        self.key: str | None = None  # `<tenant>/<run>/<file>` under the log folder
        self._file: BinaryIO | None = None
        self._last: dict[str, int] = {}  # tag -> the last step written (in any attempt's file)
        self._run_key, self._header = "", b""
        self._opened = self.broken = False
        self._dirty, self._uploaded = False, -math.inf

    def write(self, points: Sequence[Point]) -> None:
        """Append points the database has just stored, one event per step, and flush."""
        if self.broken or not points:
            return
        try:
            if not self._opened:
                self._open()  # starts with what the database holds, these points included
            elif fresh := self._fresh(points):
                self._append(encode_steps(fresh))
            self._upload(force=False)
        except Exception as exc:
            log.warning("job %s: TensorBoard events not written live: %s", self.job_id, exc)
            self.broken = True
            self._close_file()

    def finish(self) -> str | None:
        """The job ended: complete the file (written again from the database if a live write
        failed, or written now if none was made) and upload it; its URL in the store (its path in
        a log folder), or None when it has no points."""
        self._close_file()
        if self.broken or not self._opened:
            had_file, self.key, self.broken = self.key is not None, None, False
            self._open()
            if had_file and self.key is None:  # what this attempt wrote is in earlier files
                self._create(b"")
            self._close_file()
        if self.key is None:
            return None
        self._upload(force=True)
        if self.named_by is not None:
            return self.named_by.url(f"{PREFIX}/{self.key}")
        return str(self.logdir / self.key)

    def close(self) -> None:
        """Close the file and upload what is new (an attempt that ends without `finish`)."""
        self._close_file()
        try:
            self._upload(force=True)
        except Exception as exc:
            log.warning("job %s: TensorBoard events not uploaded: %s", self.job_id, exc)

    # --- internals ------------------------------------------------------------------------------

    def _fresh(self, points: Sequence[Point]) -> list[tuple[str, int, float, float]]:
        """The finite points at a step after the last one written for their tag, by step (of one
        step reported twice, the later value, as in the database)."""
        reported: dict[tuple[str, int], tuple[str, float]] = {}
        for name, step, value in points:
            if math.isfinite(value):
                reported[(tag_of(name), step)] = (name, value)
        now, fresh = time.time(), []
        for (tag, step), (name, value) in sorted(reported.items(), key=lambda item: item[0][1]):
            if step > self._last.get(tag, -1):
                self._last[tag] = step
                fresh.append((name, step, value, now))
        return fresh

    def _open(self) -> None:
        """Start the attempt's file with the database's points that earlier attempts' files lack
        (no file yet when there are none: it is made with the first point)."""
        with self.sessions() as session:
            job = session.get(Job, self.job_id)
            if job is None:
                raise LookupError(f"job {self.job_id} does not exist")
            given = job.spec.get("name") if isinstance(job.spec, dict) else None
            run = run_folder(job.tenant, run_name(given, job.kind, job.id))
            created = job.created_at
            started = (job.started_at or created).timestamp()
            query = (
                select(
                    MetricPoint.name, MetricPoint.step, MetricPoint.value, MetricPoint.recorded_at
                )
                .where(MetricPoint.job_id == self.job_id, MetricPoint.value.is_not(None))
                .order_by(MetricPoint.step, MetricPoint.name)
            )
            stored = [
                (name, step, value, at.timestamp())
                for name, step, value, at in session.execute(query)
                if value is not None
            ]
        self._opened = True
        self._run_key = f"{run}/{event_file_name(self.job_id, created, self.attempt)}"
        self._header = tfrecord(event(started, 0, file_version=FILE_VERSION))
        earlier = self._earlier_last_steps(run)
        fresh = [p for p in stored if p[1] > earlier.get(tag_of(p[0]), -1)]
        self._last = dict(earlier)
        for name, step, _, _ in stored:
            self._last[tag_of(name)] = max(self._last.get(tag_of(name), step), step)
        if fresh:
            self._create(encode_steps(fresh))

    def _append(self, data: bytes) -> None:
        if self.key is None:
            self._create(data)
            return
        if self._file is None:
            self._file = (self.logdir / self.key).open("ab")
        self._file.write(data)
        self._file.flush()
        self._dirty = True

    def _create(self, data: bytes) -> None:
        """Write the attempt's file anew: the version record and `data` (a partial file, then
        renamed, so a reader never sees half of it); then keep it open for appending."""
        self._close_file()
        self.key = self._run_key
        path = self.logdir / self.key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")  # no "tfevents" prefix: not read
        partial.write_bytes(self._header + data)
        partial.replace(path)
        self._file = path.open("ab")
        self._dirty = True

    def _earlier_last_steps(self, run: str) -> dict[str, int]:
        """The last step of each tag over the files of this job's earlier attempts."""
        last: dict[str, int] = {}
        for data in self._earlier_files(run):
            for tag, step in last_steps(data).items():
                last[tag] = max(last.get(tag, step), step)
        return last

    def _earlier_files(self, run: str) -> list[bytes]:
        def earlier(name: str) -> bool:
            attempt = _attempt_of(name, self.job_id)
            return attempt is not None and attempt < self.attempt

        if self.store is not None:
            keys = self.store.list(f"{PREFIX}/{run}")
            return [
                self.store.fs.cat_file(f"{self.store.root}/{check_key(key)}")
                for key in keys
                if earlier(key.rsplit("/", 1)[-1])
            ]
        folder = self.logdir / run
        if not folder.is_dir():
            return []
        return [p.read_bytes() for p in sorted(folder.iterdir()) if earlier(p.name)]

    def _upload(self, *, force: bool) -> None:
        if self.store is None or self.key is None or not self._dirty:
            return
        now = time.monotonic()
        if not force and now - self._uploaded < REMOTE_UPLOAD_S:
            return
        self.store.put_file(self.logdir / self.key, f"{PREFIX}/{self.key}")
        self._dirty, self._uploaded = False, now

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.warning("job %s: TensorBoard events not closed: %s", self.job_id, exc)
            self._file = None


def _local(store: ArtifactStore) -> bool:
    protocol = store.fs.protocol
    return bool({"file", "local"} & set(protocol if isinstance(protocol, tuple) else (protocol,)))


def write_event_files(
    job_id: str,
    sessions: sessionmaker[Session],
    target: ArtifactStore | Path | str,
    *,
    attempt: int = 1,
) -> str | None:
    """Write the attempt's event file from the database at once (what `EventWriter` writes at
    the end when its live writes failed); where it went, or None (the job has no points)."""
    with tempfile.TemporaryDirectory(prefix="thermoml-tensorboard-") as staging:
        writer = EventWriter(
            job_id,
            attempt=attempt,
            sessions=sessions,
            target=target if isinstance(target, ArtifactStore) else Path(target),
            staging=Path(staging),
        )
        return writer.finish()
