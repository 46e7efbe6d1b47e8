"""The client side of the `thermoml` command: talk to a running server over HTTP.

`thermoml submit spec.json [--wait]`, `jobs`, `watch JOB`, `metrics JOB [--csv]`, `models`,
`score MODEL file.csv`. The server is `--server` or `THERMOML_SERVER` (default
http://127.0.0.1:8000), the key `--api-key` or `THERMOML_API_KEY`, sent as a Bearer token. Errors
print the server's own message, never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from thermoml.errors import ThermomlError
from thermoml.http import Transport as Api
from thermoml.progress import JobProgress, format_number

DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
SCORE_BATCH_ROWS = 5000
SUMMARY_FIELDS = 12  # result fields shown when a job ends (--json shows the whole job)


class ClientError(ThermomlError):
    """Something about the command's own input to tell the user in one line (exit code 1)."""

    def __str__(self) -> str:
        return self.message


def follow(api: Api, job_id: str, out: TextIO) -> dict[str, Any]:
    """Draw the job's progress until it ends; the job as the server finally reports it."""
    job = api.json("GET", f"/v1/jobs/{job_id}")
    with JobProgress(job, out) as bar:
        for event, data in api.events(job_id):
            bar.update(event, data)
    return dict(api.json("GET", f"/v1/jobs/{job_id}"))


def report_end(job: dict[str, Any], whole: bool = False) -> int:
    """Print how the job ended (`whole`: the job as JSON); 0 if it succeeded."""
    status = job["status"]
    if whole:
        print(json.dumps(job, indent=2, sort_keys=True))
        return 0 if status == "succeeded" else 1
    print(f"job {job['id']} {status}")
    if job.get("error"):
        print(f"error: {job['error']['code']}: {job['error']['message']}", file=sys.stderr)
    if job.get("model_id"):
        print(f"model: {job['model_id']}")
    if job.get("result"):
        print(summary(job["result"]))
    return 0 if status == "succeeded" else 1


def summary(result: dict[str, Any]) -> str:
    """The result's numbers, strings and flags, one per line; lists and objects are counted,
    not printed (`--json` prints them)."""
    lines = []
    for name in sorted(result):
        value = result[name]
        if isinstance(value, bool) or value is None or isinstance(value, str):
            shown = json.dumps(value)
        elif isinstance(value, int | float):
            shown = format_number(float(value)) if isinstance(value, float) else str(value)
        else:
            continue
        lines.append(f"  {name}: {shown}")
    hidden = len(result) - len(lines)
    lines = lines[:SUMMARY_FIELDS]
    more = len(result) - len(lines)
    if more:
        what = f"{more} more field{'s' if more > 1 else ''}"
        lines.append(f"  … {what} ({hidden} lists or objects): --json shows the whole job")
    return "result:\n" + "\n".join(lines)


# --- commands -----------------------------------------------------------------------------------


def _api(args: argparse.Namespace) -> Api:
    return Api(args.server, args.api_key, user_agent="thermoml-cli")


def cmd_submit(args: argparse.Namespace, api: Api) -> int:
    path = Path(args.spec)
    try:
        spec = json.loads(sys.stdin.read() if args.spec == "-" else path.read_text())
    except OSError as exc:
        raise ClientError(f"cannot read {args.spec}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ClientError(f"{args.spec} is not JSON: {exc}") from None
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    job = api.json("POST", "/v1/jobs", json=spec, headers=headers)
    info = sys.stderr if args.json else sys.stdout  # --json: stdout holds the job's JSON alone
    print(f"submitted job {job['id']} ({job['kind']}, {job['name']})", file=info)
    print(f"dashboard: {api.url}/jobs/{job['id']}", file=info)
    if args.json and not args.wait:
        print(json.dumps(job, indent=2, sort_keys=True))
    if not args.wait:
        return 0
    return report_end(follow(api, job["id"], sys.stderr), whole=args.json)


def cmd_watch(args: argparse.Namespace, api: Api) -> int:
    return report_end(follow(api, args.job, sys.stderr), whole=args.json)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _list(
    args: argparse.Namespace,
    api: Api,
    path: str,
    params: dict[str, Any],
    columns: dict[str, Callable[[dict[str, Any]], str]],
) -> int:
    """A list page as a table of `columns` (header: how to show an item), or the server's JSON."""
    page = api.json("GET", path, params={k: v for k, v in params.items() if v})
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    rows = [[show(item) for show in columns.values()] for item in page["items"]]
    print(_table(rows, list(columns)))
    return 0


def _created(item: dict[str, Any]) -> str:
    return str(item["created_at"])[:19].replace("T", " ")


def cmd_jobs(args: argparse.Namespace, api: Api) -> int:
    params = {"limit": args.limit, "status": args.status, "kind": args.kind}
    columns: dict[str, Callable[[dict[str, Any]], str]] = {
        "id": lambda job: job["id"],
        "name": lambda job: job["name"],
        "kind": lambda job: job["kind"],
        "status": lambda job: job["status"],
        "progress": lambda job: (
            f"{100 * float((job.get('progress') or {}).get('fraction') or 0):.0f}%"
        ),
        "created": _created,
    }
    return _list(args, api, "/v1/jobs", params, columns)


def cmd_metrics(args: argparse.Namespace, api: Api) -> int:
    params: dict[str, Any] = {}
    if args.names:
        params["names"] = args.names
    if args.csv:
        params["format"] = "csv"
        sys.stdout.write(api.request("GET", f"/v1/jobs/{args.job}/metrics", params=params).text)
        return 0
    body = api.json("GET", f"/v1/jobs/{args.job}/metrics", params=params)
    print(json.dumps(body, indent=2) if args.json else _metrics_summary(body["series"]))
    return 0


def _metrics_summary(series: dict[str, dict[str, list[Any]]]) -> str:
    rows = []
    for name in sorted(series):
        steps, values = series[name]["steps"], series[name]["values"]
        if steps:
            rows.append([name, str(len(steps)), str(steps[-1]), format_number(values[-1])])
    return _table(rows, ["metric", "points", "last step", "last value"])


def cmd_models(args: argparse.Namespace, api: Api) -> int:
    params = {"limit": args.limit, "kind": args.kind, "name": args.name}
    columns: dict[str, Callable[[dict[str, Any]], str]] = {
        "id": lambda m: m["id"],
        "model": lambda m: f"{m['name']}@{m['version']}",
        "kind": lambda m: m["kind"],
        "serves": lambda m: ",".join(m["capabilities"]),
        "created": _created,
    }
    return _list(args, api, "/v1/models", params, columns)


def read_rows(path: str, *, label_column: str | None = None) -> list[list[float]]:
    """Numeric rows of a CSV file; a first line that is not numbers is taken as the header."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}") from None
    records = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not records:
        raise ClientError(f"{path} holds no rows")
    header: list[str] | None = None
    try:
        [float(c) for c in records[0]]
    except ValueError:
        header, records = records[0], records[1:]
    drop = None
    if label_column is not None:
        if header is None or label_column not in header:
            raise ClientError(f"{path} has no column {label_column!r}")
        drop = header.index(label_column)
    rows = []
    for number, record in enumerate(records, start=2 if header else 1):
        cells = [c for i, c in enumerate(record) if i != drop]
        try:
            rows.append([float(c) for c in cells])
        except ValueError:
            raise ClientError(f"{path}, line {number}: not a row of numbers: {record}") from None
    if not rows:
        raise ClientError(f"{path} holds no rows (only a header)")
    return rows


def cmd_score(args: argparse.Namespace, api: Api) -> int:
    rows = read_rows(args.file, label_column=args.label_column)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["row", "score", "is_anomaly"])
    threshold = None
    for start in range(0, len(rows), args.batch_rows):
        batch = rows[start : start + args.batch_rows]
        answer = api.json("POST", f"/v1/models/{args.model}/score", json={"inputs": batch})
        threshold = answer.get("threshold")
        flags = answer.get("is_anomaly") or [None] * len(answer["scores"])
        for offset, (score, flag) in enumerate(zip(answer["scores"], flags, strict=True)):
            writer.writerow([start + offset, "" if score is None else repr(score), flag])
    print(f"scored {len(rows)} rows with {args.model}; threshold {threshold}", file=sys.stderr)
    return 0


def cmd_drift(args: argparse.Namespace, api: Api) -> int:
    rows = read_rows(args.file, label_column=args.label_column)
    params = {"permutations": args.permutations, "alpha": args.alpha, "seed": args.seed}
    answer = api.json(
        "POST", f"/v1/models/{args.model}/drift", params=params, json={"inputs": rows}
    )
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    verdict = "drift" if answer["drift"] else "no drift"
    print(
        f"{verdict}: MMD² {answer['statistic']:.4g}, p = {answer['p_value']:.4g} "
        f"({answer['permutations']} permutations, alpha {answer['alpha']}); "
        f"{answer['rows']} rows against {answer['reference_rows']} reference rows"
    )
    drifted = [f for f in answer["features"] if f["drift"]]
    if drifted:
        print(
            _table(
                [
                    [str(f["feature"]), f"{f['statistic']:.3f}", f"{f['p_value_adjusted']:.3g}"]
                    for f in sorted(drifted, key=lambda f: f["p_value_adjusted"])
                ],
                ["feature", "KS", "p (BH)"],
            )
        )
    return 0


# --- wiring -------------------------------------------------------------------------------------


def _run(command: Callable[[argparse.Namespace, Api], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        api = _api(args)
        try:
            return command(args, api)
        except ThermomlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted; the job goes on (`thermoml watch` follows it)", file=sys.stderr)
            return 130
        finally:
            api.close()

    return run


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("THERMOML_SERVER") or DEFAULT_SERVER,
        help="the thermoml server (env THERMOML_SERVER; default %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("THERMOML_API_KEY"),
        help="API key, sent as a Bearer token (env THERMOML_API_KEY)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="also log what the libraries do (HTTP calls)",
    )


def _list_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="the server's JSON page")
    _connection(parser)


def add_client_commands(subparsers: Any) -> None:
    """Add submit, jobs, watch, metrics, models and score to the `thermoml` command."""
    submit = subparsers.add_parser("submit", help="submit a job spec (JSON file, or - for stdin)")
    submit.add_argument("spec", help="the job spec: a JSON file, or - to read it from stdin")
    submit.add_argument("--wait", action="store_true", help="show progress until the job ends")
    submit.add_argument("--idempotency-key", help="the same key and spec give the same job")
    submit.add_argument(
        "--json", action="store_true", help="the job as JSON on stdout (with --wait: at its end)"
    )
    _connection(submit)
    submit.set_defaults(func=_run(cmd_submit))

    jobs = subparsers.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--status", choices=["queued", "running", *TERMINAL])
    jobs.add_argument("--kind")
    _list_options(jobs)
    jobs.set_defaults(func=_run(cmd_jobs))

    watch = subparsers.add_parser("watch", help="follow a job's progress until it ends")
    watch.add_argument("job", help="job id")
    watch.add_argument("--json", action="store_true", help="the whole job as JSON at its end")
    _connection(watch)
    watch.set_defaults(func=_run(cmd_watch))

    metrics = subparsers.add_parser("metrics", help="a job's metric history")
    metrics.add_argument("job", help="job id")
    metrics.add_argument("--csv", action="store_true", help="one CSV row per step")
    metrics.add_argument("--names", help="comma-separated metric names (default: all)")
    metrics.add_argument("--json", action="store_true", help="the series as JSON")
    _connection(metrics)
    metrics.set_defaults(func=_run(cmd_metrics))

    models = subparsers.add_parser("models", help="list registered models")
    models.add_argument("--kind")
    models.add_argument("--name", help="all versions of this name")
    _list_options(models)
    models.set_defaults(func=_run(cmd_models))

    score = subparsers.add_parser("score", help="anomaly scores of a CSV file's rows, as CSV")
    score.add_argument("model", help="model id, name (latest version) or name@version")
    score.add_argument("file", help="CSV of numeric rows (a header line is allowed), or -")
    score.add_argument("--label-column", help="a column to leave out (e.g. the label)")
    score.add_argument("--batch-rows", type=int, default=SCORE_BATCH_ROWS, help=argparse.SUPPRESS)
    _connection(score)
    score.set_defaults(func=_run(cmd_score))

    drift = subparsers.add_parser(
        "drift", help="have a CSV file's rows drifted from a model's training rows?"
    )
    drift.add_argument("model", help="model id, name (latest version) or name@version")
    drift.add_argument("file", help="CSV of numeric rows (a header line is allowed), or -")
    drift.add_argument("--label-column", help="a column to leave out (e.g. the label)")
    drift.add_argument("--permutations", type=int, default=100)
    drift.add_argument("--alpha", type=float, default=0.05)
    drift.add_argument("--seed", type=int, default=0)
    drift.add_argument("--json", action="store_true", help="the whole answer as JSON")
    _connection(drift)
    drift.set_defaults(func=_run(cmd_drift))
