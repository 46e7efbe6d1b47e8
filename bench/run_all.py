"""Run every benchmark under bench/ and gather their JSON reports into one.

    python bench/run_all.py [--quick] [--only NAME ...]

`--quick` runs each benchmark's quick mode (CI uses it to check that each one runs, not its
figures). Each benchmark runs in its own process; the report is bench/results/all.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.common import RESULTS, table, write_report  # noqa: E402

SKIP = {"common", "run_all", "__init__"}


def benchmarks() -> list[str]:
    return sorted(
        p.stem for p in HERE.glob("*.py") if p.stem not in SKIP and not p.stem.startswith("_")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    names = args.only or benchmarks()
    rows, reports = [], {}
    for name in names:
        command = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else [])]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
        seconds = time.perf_counter() - started
        report_file = RESULTS / f"{name}.json"
        ok = result.returncode == 0
        rows.append({"benchmark": name, "ok": "yes" if ok else "NO", "seconds": seconds})
        if ok and report_file.exists():
            reports[name] = json.loads(report_file.read_text())
        else:
            tail = (result.stdout + result.stderr)[-3000:]
            reports[name] = {"error": tail, "exit_code": result.returncode}
            print(f"--- {name} failed (exit {result.returncode}):\n{tail}", file=sys.stderr)
    print(table(rows, ["benchmark", "ok", "seconds"]))
    path = write_report("all", {"quick": args.quick, "benchmarks": reports})
    print(f"wrote {path}")
    return 0 if all(r["ok"] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
