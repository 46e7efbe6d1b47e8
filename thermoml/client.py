"""`thermoml.Client`: jobs, models and their operations from Python, NumPy in and out.

    import numpy as np
    import thermoml

    client = thermoml.Client("http://127.0.0.1:8000", api_key=None)
    job = client.jobs.submit({"kind": "autoencoder", "dataset": "builtin:breast_cancer"})
    job.wait(progress=True)
    scores = client.models.score(job.model_id, np.random.rand(5, 30))["scores"]

Rows go to the server as `.npy` and answers come back as `.npz`, so arrays keep their dtype and
no JSON is parsed on either side. Only httpx and NumPy are needed (no TensorFlow).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np

from thermoml.http import Transport
from thermoml.progress import JobProgress

NPY = "application/x-npy"
NPZ = "application/x-npz"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class Client:
    """A thermoml server at `url`. `api_key` is sent as a Bearer token; `retries` is how many
    more times a request refused with 429 or 503 is sent again (after Retry-After)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 4,
        **transport: Any,
    ) -> None:
        self.transport = Transport(url, api_key, timeout=timeout, retries=retries, **transport)
        self.jobs = Jobs(self)
        self.models = Models(self)

    @property
    def url(self) -> str:
        return self.transport.url

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """A job's server-sent events `(event, data)` (`status`, `progress`, `metrics`, `end`)
        until it ends, resumed across dropped connections."""
        return self.transport.events(job_id)


class Job:
    """A job as the server last described it (`data`); `refresh()` asks again."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self.client = client
        self.data = data

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, kind={self.data.get('kind')!r}, status={self.status!r})"

    id = property(lambda self: str(self.data["id"]))
    status = property(lambda self: str(self.data["status"]))
    kind = property(lambda self: self.data.get("kind"))
    name = property(lambda self: self.data.get("name"))
    result = property(lambda self: self.data.get("result"))
    error = property(lambda self: self.data.get("error"))
    progress = property(lambda self: self.data.get("progress") or {})
    model_id = property(lambda self: self.data.get("model_id"))

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> Job:
        self.data = self.client.transport.json("GET", f"/v1/jobs/{self.id}")
        return self

    def wait(
        self, *, progress: bool = False, timeout: float | None = None, poll: float = 0.5
    ) -> Job:
        """Until the job has ended (succeeded, failed or cancelled); `progress` draws a bar with
        elapsed time and ETA on stderr. TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            with JobProgress(self.data) as bar:
                for event, data in self.client.events(self.id):
                    bar.update(event, data)
                    _check(deadline, self)
            return self.refresh()
        while not self.refresh().done:
            _check(deadline, self)
            time.sleep(poll)
        return self

    def cancel(self) -> Job:
        self.data = self.client.transport.json("POST", f"/v1/jobs/{self.id}/cancel")
        return self

    def metrics(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The metric history as columns: `step` (int64, every step any metric was recorded
        at) and one float64 array per metric, NaN where it was not measured or was undefined."""
        params = {"names": ",".join(names)} if names else {}
        body = self.client.transport.json("GET", f"/v1/jobs/{self.id}/metrics", params=params)
        return wide(body["series"])

    def metrics_frame(self, names: list[str] | None = None) -> Any:
        """`metrics()` as a pandas DataFrame indexed by step (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("metrics_frame needs pandas: pip install pandas") from None
        columns = self.metrics(names)
        return pd.DataFrame(columns).set_index("step")


def _check(deadline: float | None, job: Job) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"job {job.id} is still {job.status}")


def wide(series: dict[str, dict[str, list[Any]]]) -> dict[str, np.ndarray]:
    """`{name: {"steps", "values"}}` series as aligned columns over the union of their steps."""
    every = [np.asarray(s["steps"], np.int64) for s in series.values()]
    steps = np.unique(np.concatenate(every)) if every else np.zeros(0, np.int64)
    columns: dict[str, np.ndarray] = {"step": steps}
    for name, s in series.items():
        values = np.full(len(steps), np.nan)
        found = np.array([np.nan if v is None else v for v in s["values"]], np.float64)
        values[np.searchsorted(steps, np.asarray(s["steps"], np.int64))] = found
        columns[name] = values
    return columns


class Jobs:
    def __init__(self, client: Client) -> None:
        self.client = client

    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Queue a job (`spec` as in `POST /v1/jobs`); the same `idempotency_key` with the same
        spec answers with the same job instead of a second one."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        data = self.client.transport.json("POST", "/v1/jobs", json=spec, headers=headers)
        return Job(self.client, data)

    def get(self, job_id: str) -> Job:
        return Job(self.client, self.client.transport.json("GET", f"/v1/jobs/{job_id}"))

    def list(self, *, status: str | None = None, kind: str | None = None) -> Iterator[Job]:
        """Every job the key may see, newest first, fetched a page at a time."""
        filters = {k: v for k, v in {"status": status, "kind": kind}.items() if v}
        for item in _pages(self.client, "/v1/jobs", filters):
            yield Job(self.client, item)


class Models:
    def __init__(self, client: Client) -> None:
        self.client = client

    def list(self, *, kind: str | None = None, name: str | None = None) -> Iterator[dict[str, Any]]:
        """Every registered model the key may see, newest first."""
        filters = {k: v for k, v in {"kind": kind, "name": name}.items() if v}
        return _pages(self.client, "/v1/models", filters)

    def get(self, ref: str) -> dict[str, Any]:
        """A model by id, name (its latest version) or `name@version`."""
        return dict(self.client.transport.json("GET", f"/v1/models/{ref}"))

    def score(self, ref: str, rows: Any) -> dict[str, Any]:
        """Anomaly scores: `scores`, `is_anomaly` and the calibrated `threshold`."""
        return self._rows("score", ref, rows)

    def encode(self, ref: str, rows: Any) -> dict[str, Any]:
        return self._rows("encode", ref, rows)

    def reconstruct(self, ref: str, rows: Any) -> dict[str, Any]:
        return self._rows("reconstruct", ref, rows)

    def predict(self, ref: str, rows: Any) -> dict[str, Any]:
        return self._rows("predict", ref, rows)

    def generate(self, ref: str, n: int, **options: Any) -> dict[str, Any]:
        """`n` samples (`samples`) in the data's raw units; `seed`, `sampler`, `steps` as the
        route documents them."""
        body = {"n": n, **options}
        response = self.client.transport.request(
            "POST", f"/v1/models/{ref}/generate", json=body, headers={"Accept": NPZ}
        )
        return _arrays(response.content)

    def drift(self, ref: str, rows: Any, **options: Any) -> dict[str, Any]:
        """Have `rows` drifted from the model's training rows? `drift`, `p_value`, `statistic`
        (kernel MMD, permutation test) and `features` (per-feature Kolmogorov–Smirnov);
        `permutations`, `alpha`, `seed` as the route documents them."""
        response = self._post_rows("drift", ref, rows, "application/json", options)
        answer: dict[str, Any] = response.json()
        return answer

    def _rows(self, operation: str, ref: str, rows: Any) -> dict[str, Any]:
        return _arrays(self._post_rows(operation, ref, rows, NPZ).content)

    def _post_rows(
        self, operation: str, ref: str, rows: Any, accept: str, params: Any = None
    ) -> httpx.Response:
        """The answer to `rows` sent as `.npy` to the model's `operation`."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(rows, dtype=np.float32), allow_pickle=False)
        return self.client.transport.request(
            "POST",
            f"/v1/models/{ref}/{operation}",
            content=buffer.getvalue(),
            params=params,
            headers={"Content-Type": NPY, "Accept": accept},
        )


def _arrays(content: bytes) -> dict[str, Any]:
    """An .npz answer as a dict: arrays, and plain Python values for its scalars."""
    with np.load(io.BytesIO(content), allow_pickle=False) as npz:
        return {k: npz[k].item() if npz[k].ndim == 0 else npz[k] for k in npz.files}


def _pages(client: Client, path: str, filters: dict[str, str]) -> Iterator[dict[str, Any]]:
    cursor: str | None = None
    while True:
        params = {**filters, "limit": 100, **({"cursor": cursor} if cursor else {})}
        page = client.transport.json("GET", path, params=params)
        yield from page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return
