"""Loaded models for serving: downloaded and verified once, kept in a bounded LRU cache; and
what a model reference (id, name or name@version) resolves to for a tenant scope, kept
`model_ref_ttl` seconds.

A model's kind loads it (`Kind.load`) into a :class:`ml.core.serving.Servable` whose operations are
compiled once with a fixed input signature. TensorFlow is imported here on the first request
that needs a model, never at start-up. Eviction is by count and by estimated size.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import shutil
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session

from ml.core.registry import LoadFn, get_kind
from ml.core.serving import Servable
from service.admission import Admission
from service.batching import Batcher
from service.config import Settings
from service.db import models as model_repo
from service.db.tenancy import Scope
from service.errors import ServiceError
from service.storage import ArtifactStore

Sessions = Callable[[], AbstractContextManager[Session]]

log = logging.getLogger(__name__)
# A loaded Keras model takes a few times its file size in memory (weights, graphs, buffers).
MEMORY_PER_FILE_BYTE = 3


@dataclass(frozen=True)
class ModelInfo:
    """What serving needs of a models row (a plain snapshot, safe to use across threads)."""

    id: str
    kind: str
    sha256: str
    files: dict[str, Any]
    input_shape: list[int]
    preprocessing: dict[str, Any]
    calibration: dict[str, Any]
    capabilities: list[str]
    pictures: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, row: Any) -> ModelInfo:
        return cls(
            id=row.id,
            kind=row.kind,
            sha256=row.sha256,
            files=dict(row.files or {}),
            input_shape=list(row.input_shape or []),
            preprocessing=dict(row.preprocessing or {}),
            calibration=dict(row.calibration or {}),
            capabilities=list(row.capabilities or []),
            pictures=list(row.pictures or []),
        )

    @property
    def cache_key(self) -> str:
        """The model cache's key: the model and the files it is loaded from."""
        return f"{self.id}:{self.sha256}"

    @property
    def size_bytes(self) -> int:
        return sum(int(entry.get("size", 0)) for entry in self.files.values())


class Forgets(Protocol):
    """What else holds loaded models (the model processes), told when a model is deleted."""

    def forget(self, model_id: str) -> None: ...


@dataclass
class _Entry:
    servable: Servable
    bytes: int
    batchers: dict[str, Batcher] = field(default_factory=dict)


class ModelCache:
    """The process's loaded models, and its memory of what references resolve to."""

    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        self.max_models = settings.model_cache_models
        self.max_bytes = settings.model_cache_bytes
        self.store = store
        self.folder = cache_folder(settings)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.ref_ttl = settings.model_ref_ttl
        # (scope, ref) -> (expiry, info): a name means another model in another tenant.
        self._refs: dict[tuple[str, str], tuple[float, ModelInfo]] = {}
        self.in_flight = 0  # operations under way (a lone one may skip the batching path)
        self.admission = Admission(settings)  # bounds per model, and the inference threads
        self.processes: Forgets | None = None  # the model processes, once a request needed them

    def known(self, ref: str, scope: Scope) -> ModelInfo | None:
        """What `ref` resolved to for `scope` less than `model_ref_ttl` seconds ago (never
        blocks)."""
        hit = self._refs.get((scope.cache_key, ref))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def resolve(
        self, sessions: Sessions, ref: str, *, scope: Scope, fresh: bool = False
    ) -> ModelInfo:
        """The models row behind `ref` for a caller of `scope` (404 if none), remembered for
        `model_ref_ttl` seconds; `fresh` reads the row again whatever is remembered."""
        now = time.monotonic()
        hit = None if fresh else self.known(ref, scope)
        if hit is not None:
            return hit
        with sessions() as session:
            info = ModelInfo.of(model_repo.resolve(session, ref, scope=scope))
        self._refs[(scope.cache_key, ref)] = (now + self.ref_ttl, info)
        return info

    @property
    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(e.bytes for e in self._entries.values())

    def get(self, info: ModelInfo, *, load: LoadFn | None = None) -> Servable:
        """The loaded model of `info` (loaded with `load`, by default its kind's)."""
        key = info.cache_key
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry.servable
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per model, however many requests arrive at once
            with self._lock:
                entry = self._entries.get(key)
            if entry is None:
                load = load or get_kind(info.kind).load
                files = self._download(info, load)  # a store that fails costs no loaded model
                # Make room first, from the files' size: loading next to the models it will
                # replace would hold both at once.
                with self._lock:
                    evicted = self._evict(incoming=estimated_bytes(info))
                if evicted:
                    release_memory()
                entry = self._load(info, files, load)
                with self._lock:
                    self._entries[key] = entry
                    self._evict()
                release_memory()  # also puts the new model out of the collector's way
            with self._lock:
                self._loading.pop(key, None)
        return entry.servable

    def batcher(self, info: ModelInfo, operation: str, max_rows: int, max_wait_s: float) -> Batcher:
        """The micro-batcher of one model's operation (made with the loaded model)."""
        servable = self.get(info)
        gate = self.admission.gate(info.cache_key)
        made = Batcher(
            lambda x: servable.run(operation, x),
            max_rows,
            max_wait_s,
            run_sync=self.admission.run_sync,
            observe=lambda rows, seconds: gate.estimate(operation).update(rows, seconds),
        )
        with self._lock:
            entry = self._entries.get(info.cache_key)
        if entry is None:  # evicted meanwhile: batch nothing
            return made
        return entry.batchers.setdefault(operation, made)

    def ready_batcher(self, info: ModelInfo, operation: str) -> Batcher | None:
        """The batcher of a loaded model's operation, if it exists: a lookup that never blocks,
        so a request can skip the thread pool that loading a model needs."""
        key = info.cache_key
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.batchers.get(operation)

    def discard(self, model_id: str) -> None:
        """Forget a deleted model: its loaded copies, its files, the references to it."""
        for ref in [r for r, (_, info) in list(self._refs.items()) if info.id == model_id]:
            self._refs.pop(ref, None)
        with self._lock:
            dropped = [k for k in self._entries if k.startswith(f"{model_id}:")]
            for key in dropped:
                del self._entries[key]
        if dropped:
            release_memory()
        self.admission.forget(model_id)
        if self.processes is not None:
            self.processes.forget(model_id)
        shutil.rmtree(self.folder / model_id, ignore_errors=True)

    def _evict(self, incoming: int = 0) -> int:
        """Drop least recently used models until the cache, plus `incoming` bytes and a model
        about to load when `incoming` is set, fits its bounds; keeps the newest model."""
        evicted = 0
        keep = 0 if incoming else 1
        extra = 1 if incoming else 0
        while len(self._entries) > keep and (
            len(self._entries) + extra > self.max_models
            or sum(e.bytes for e in self._entries.values()) + incoming > self.max_bytes
        ):
            key, _ = self._entries.popitem(last=False)
            evicted += 1
            log.info("model cache: evicted %s", key)
        return evicted

    def _download(self, info: ModelInfo, load: LoadFn | None) -> dict[str, Path]:
        if load is None:
            raise ServiceError("unsupported_operation", f"kind {info.kind!r} serves nothing")
        folder = self.folder / info.id / info.sha256[:16]
        return {name: self._fetch(entry, folder) for name, entry in info.files.items()}

    def _fetch(self, entry: dict[str, Any], folder: Path) -> Path:
        """One file of the model into `folder`, whole or not at all: the API and its model
        processes share the folder, and one must never read a file the other is rewriting."""
        local = folder / entry["key"].rsplit("/", 1)[-1]
        part = folder / f".{local.name}.{os.getpid()}.{threading.get_ident()}.part"
        try:
            self.store.download(entry["key"], part, sha256=entry["sha256"])
            os.replace(part, local)
        finally:
            part.unlink(missing_ok=True)
        return local

    def _load(self, info: ModelInfo, files: dict[str, Path], load: LoadFn | None) -> _Entry:
        assert load is not None  # checked by _download
        meta = {
            "input_shape": info.input_shape,
            "preprocessing": info.preprocessing,
            "calibration": info.calibration,
            "capabilities": info.capabilities,
        }
        runtime_loaded = "tensorflow" in sys.modules
        before = resident_bytes()
        servable = load(files, meta)
        grown = resident_bytes() - before
        if not runtime_loaded and "tensorflow" in sys.modules:
            grown = 0  # that was TensorFlow starting, which eviction cannot give back
        # What the load really took, within 8x the estimate.
        estimate = estimated_bytes(info)
        size = max(estimate, min(grown, 8 * estimate)) if grown > 0 else estimate
        log.info("model cache: loaded %s (%s, ~%d KiB)", info.id, info.kind, size // 1024)
        return _Entry(servable, size)


def cache_folder(settings: Settings) -> Path:
    """Where the API processes of one data dir keep the model files they downloaded."""
    return (settings.data_dir / "cache" / "models").resolve()


def estimated_bytes(info: ModelInfo) -> int:
    return max(1, info.size_bytes) * MEMORY_PER_FILE_BYTE


def release_memory() -> None:
    """Free evicted models now, put the loaded ones out of the collector's way, and hand the
    freed memory back to the system. Called after every load and eviction (rare events).

    A loaded Keras model and its compiled functions are reference cycles: only a full
    collection frees one, and without it loads pile up. The models' millions of objects would
    also be walked by every full collection, which Python runs every few seconds under load:
    a ~200 ms pause of the whole API (the p99 of 64 clients on a tiny model). So everything
    alive after the collection is frozen (`gc.freeze`), and unfrozen before the next one.
    glibc then keeps the freed pages in its arenas unless asked to trim them."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    with suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")
