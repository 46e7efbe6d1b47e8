"""Upload and load time and peak memory of a data set as CSV, Parquet and NPY.

The same float32 table (~100 MB as CSV; a few MB with --quick) in three formats:

- upload: POST /v1/datasets to a real `uvicorn` server (a fresh process per case) over HTTP,
  streamed from disk; peak memory is the server's VmHWM (peak resident set, /proc) minus its
  resident set just before the upload.
- load (service): what a job does, `service.datasets.load`: copy from the artifact store, check
  the sha256, parse and validate; in a fresh subprocess per case.
- load (loader): `ml.core.datasets.load_file` on the local file alone; fresh subprocess per case.

Peak memory is measured per process, not with tracemalloc (Arrow allocates outside Python's
allocator): the peak resident set is reset (`/proc/<pid>/clear_refs`) just before the work, and
"peak added" is the peak after it (VmHWM, of the load subprocess or of the server) minus the
resident set before it. Not `ru_maxrss`: after fork+exec it keeps the parent's peak. The server
first takes a warm-up upload of a tiny file of the same format, and the load subprocesses import
the readers first, so no import is counted.

    python bench/datasets.py [--quick] [--mb 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import table, write_report

FEATURES = 32
FORMATS = {"csv": "data.csv", "parquet": "data.parquet", "npy": "data.npy"}


def make_files(folder: Path, target_mb: float) -> tuple[dict[str, Path], int]:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    sample = pa.table({f"f{i}": rng.standard_normal(1000).astype(np.float32) for i in range(32)})
    probe = folder / "probe.csv"
    pcsv.write_csv(sample, probe)
    rows = int(target_mb * 1e6 / (probe.stat().st_size / 1000))
    probe.unlink()
    x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    columns = pa.table({f"f{i}": x[:, i] for i in range(FEATURES)})
    paths = {fmt: folder / name for fmt, name in FORMATS.items()}
    pcsv.write_csv(columns, paths["csv"])
    pq.write_table(columns, paths["parquet"])
    np.save(paths["npy"], x)
    return paths, rows


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Reset the process's peak resident set, VmHWM (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def warm_up(base: str, suffix: str, work: Path) -> None:
    """Upload a tiny file of the same format, so the measured upload imports nothing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tiny = work / f"tiny{suffix}"
    x = np.arange(6, dtype=np.float32).reshape(3, 2) + time.time()
    if suffix == ".csv":
        tiny.write_text("a,b\n" + "".join(f"{r[0]},{r[1]}\n" for r in x))
    elif suffix == ".parquet":
        pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), tiny)
    else:
        np.save(tiny, x)
    with tiny.open("rb") as handle:
        httpx.post(f"{base}/v1/datasets", files={"file": (tiny.name, handle)}).raise_for_status()


def upload_case(path: Path, work: Path) -> dict[str, Any]:
    """Upload through a fresh uvicorn server; (seconds, peak MiB added, dataset id, data dir)."""
    from migrations import upgrade

    data_dir = work / f"state-{path.suffix[1:]}"
    env = {**os.environ, "THERMOML_DATA_DIR": str(data_dir)}
    env.pop("THERMOML_DATABASE_URL", None)
    env.pop("THERMOML_ARTIFACT_URI", None)
    upgrade(f"sqlite:///{(data_dir / 'thermoml.db').resolve()}")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.main:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.1)
        warm_up(base, path.suffix, work)
        reset_peak(server.pid)
        baseline = proc_kib(server.pid, "VmRSS")
        started = time.perf_counter()
        with path.open("rb") as handle:
            response = httpx.post(
                f"{base}/v1/datasets", files={"file": (path.name, handle)}, timeout=600
            )
        seconds = time.perf_counter() - started
        response.raise_for_status()
        peak = proc_kib(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(30)
    return {
        "seconds": seconds,
        "peak_mib": (peak - baseline) / 1024,
        "rss_mib": peak / 1024,
        "id": response.json()["id"],
        "data_dir": str(data_dir),
    }


def preload() -> None:
    """Import the readers before measuring: imports are not the work."""
    import importlib

    for name in ("pyarrow.csv", "pyarrow.parquet", "ml.core.loaders"):
        importlib.import_module(name)


def child(args: argparse.Namespace) -> None:
    """One load case in this fresh process; prints JSON."""
    if args.child == "service":
        os.environ["THERMOML_DATA_DIR"] = args.data_dir
        from service import datasets
        from service.config import get_settings
        from service.db.session import make_engine, make_sessionmaker
        from service.storage import ArtifactStore

        settings = get_settings()
        sessions = make_sessionmaker(make_engine(settings.resolved_database_url))
        store = ArtifactStore.from_settings(settings)
        preload()

        def work() -> Any:
            with tempfile.TemporaryDirectory() as folder:
                return datasets.load(sessions, store, args.id, Path(folder))
    else:
        preload()
        from ml.core.datasets import load_file

        def work() -> Any:
            return load_file(Path(args.path), args.fmt)

    reset_peak(os.getpid())
    before = proc_kib(os.getpid(), "VmRSS")
    started = time.perf_counter()
    data = work()
    seconds = time.perf_counter() - started
    after = proc_kib(os.getpid(), "VmHWM")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_mib": (after - before) / 1024,
                "rss_mib": after / 1024,
                "shape": list(data.x.shape),
            }
        )
    )


def run_child(*extra: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *extra], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few MB, for CI")
    parser.add_argument("--mb", type=float, default=100.0, help="CSV size to aim for")
    parser.add_argument("--child", choices=["service", "loader"], help=argparse.SUPPRESS)
    parser.add_argument("--fmt", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--id", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    target = 4.0 if args.quick else args.mb
    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="thermoml-bench-") as tmp:
        work = Path(tmp)
        paths, rows = make_files(work, target)
        for fmt, path in paths.items():
            size_mb = path.stat().st_size / 1e6
            uploaded = upload_case(path, work)
            service = run_child(
                "--child", "service", "--id", uploaded["id"], "--data-dir", uploaded["data_dir"]
            )
            loader = run_child("--child", "loader", "--fmt", fmt, "--path", str(path))
            assert service["shape"] == loader["shape"] == [rows, FEATURES]
            for case, m in (
                ("upload (HTTP)", uploaded),
                ("load (service)", service),
                ("load (loader)", loader),
            ):
                rows_out.append(
                    {
                        "format": fmt,
                        "file_mb": round(size_mb, 1),
                        "case": case,
                        "ms": round(m["seconds"] * 1000, 1),
                        "mb_per_s": round(size_mb / m["seconds"], 1),
                        "peak_added_mib": round(m["peak_mib"], 1),
                        "peak_rss_mib": round(m["rss_mib"], 1),
                    }
                )
    columns = ["format", "file_mb", "case", "ms", "mb_per_s", "peak_added_mib", "peak_rss_mib"]
    print(f"{rows} rows x {FEATURES} float32 features")
    print(table(rows_out, columns))
    report = {
        "rows": rows,
        "features": FEATURES,
        "quick": args.quick,
        "memory": "VmHWM (peak RSS, reset via /proc/<pid>/clear_refs before the work) minus "
        "VmRSS before the work; upload: the uvicorn server; loads: a fresh subprocess per case",
        "results": rows_out,
    }
    print(f"wrote {write_report('datasets', report)}")


if __name__ == "__main__":
    main()
