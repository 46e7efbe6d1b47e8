"""A job's metric history as TensorBoard event files, written at the job's end.

Each tenant has its own folder: a job's run is `<artifact root>/tensorboard/<tenant>/<job id>`.
`tensorboard --logdir <artifact root>/tensorboard/<tenant>` shows one tenant's jobs, each a run
named by its id, and nothing of another tenant's, so an operator can give each tenant a
TensorBoard of its own; `--logdir <artifact root>/tensorboard` shows every tenant's, as runs named
`<tenant>/<job id>`. No route of the API serves these files: they are read by TensorBoard alone.

The files are TFRecord files of `Event` protocol buffers that this module encodes itself (a few
fields of `tensorflow/core/util/event.proto` and `summary.proto`), so that neither TensorFlow nor
the `tensorboard` package is needed to write them. Each metric is a scalar (`simple_value`),
tagged `<group>/<name>` with the groups of the plots (energy, temperature, entropy, ...), so
TensorBoard shows related thermodynamic metrics side by side.

The file's name is derived from the job alone: writing again (a job resumed by another worker)
replaces it instead of adding a second copy of the points.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.db import tenancy
from service.db.tables import Job, MetricPoint
from service.plots import GROUP_OF
from service.storage import ArtifactStore

PREFIX = "tensorboard"
FILE_VERSION = b"brain.Event:2"


# --- CRC-32C (Castagnoli), as TFRecord frames use it -----------------------------------------


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord frame: length, its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return (
        length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))
    )


# --- protocol buffer fields ---------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 as protobuf encodes it (negative: ten bytes)
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def scalar_value(tag: str, value: float) -> bytes:
    """`Summary.Value{tag = 1, simple_value = 2}`."""
    return _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def event(
    wall_time: float, step: int, *, file_version: bytes | None = None, values: Iterable[bytes] = ()
) -> bytes:
    """`Event{wall_time = 1, step = 2, file_version = 3 | summary = 5}`."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version)
    else:
        summary = b"".join(_bytes_field(1, v) for v in values)
        out += _bytes_field(5, summary)
    return out


def tag_of(name: str) -> str:
    group = GROUP_OF.get(name)
    return f"{group.key}/{name}" if group is not None else name


# --- the job's file -----------------------------------------------------------------------------


def event_file_name(job_id: str, created_at: dt.datetime) -> str:
    # TensorBoard finds files by "tfevents" in the name and orders them by the timestamp.
    return f"events.out.tfevents.{int(created_at.timestamp())}.thermoml-{job_id}"


def encode_history(
    points: list[tuple[str, int, float | None, dt.datetime]], *, started: float
) -> bytes:
    """The whole event file: the version record, then one event per step with its scalars.
    Non-finite points (stored as NULL) are left out: TensorBoard draws them as gaps anyway."""
    by_step: dict[int, list[bytes]] = defaultdict(list)
    wall: dict[int, float] = {}
    for name, step, value, recorded_at in points:
        if value is None:
            continue
        by_step[step].append(scalar_value(tag_of(name), value))
        wall[step] = max(wall.get(step, 0.0), recorded_at.timestamp())
    records = [tfrecord(event(started, 0, file_version=FILE_VERSION))]
    for step in sorted(by_step):
        records.append(tfrecord(event(wall[step], step, values=by_step[step])))
    return b"".join(records)


def run_folder(tenant: str, job_id: str) -> str:
    """`<tenant>/<job id>`: where a job's run goes under a log folder. The tenant's name is checked
    again here (it becomes a folder name): never a path that leaves its tenant's folder."""
    return f"{tenancy.check_name(tenant)}/{job_id}"


def write_event_files(
    job_id: str, sessions: sessionmaker[Session], store_or_folder: ArtifactStore | Path | str
) -> str | None:
    """Write the job's metric history as a TensorBoard run; where it went, or None (no points).

    To an artifact store: `tensorboard/<tenant>/<job_id>/events.out.tfevents.*` under its root (so
    `tensorboard --logdir <root>/tensorboard/<tenant>` lists that tenant's jobs). To a folder:
    `<folder>/<tenant>/<job_id>/`.
    """
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise LookupError(f"job {job_id} does not exist")
        run = run_folder(job.tenant, job.id)
        created = job.created_at
        started = (job.started_at or created).timestamp()
        query = (
            select(MetricPoint.name, MetricPoint.step, MetricPoint.value, MetricPoint.recorded_at)
            .where(MetricPoint.job_id == job_id)
            .order_by(MetricPoint.step, MetricPoint.name)
        )
        points = [(r[0], r[1], r[2], r[3]) for r in session.execute(query)]
    if not points:
        return None
    data = encode_history(points, started=started)
    name = event_file_name(job_id, created)
    if isinstance(store_or_folder, ArtifactStore):
        return store_or_folder.put_bytes(data, f"{PREFIX}/{run}/{name}").uri
    folder = Path(store_or_folder) / run
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    partial = folder / f".{name}.partial"  # no "tfevents" prefix: TensorBoard skips it
    partial.write_bytes(data)
    partial.replace(path)
    return str(path)
