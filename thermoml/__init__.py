"""thermoml's Python client. `pip install thermoml`, then:

    import thermoml

    with thermoml.Client("http://127.0.0.1:8000") as client:
        job = client.jobs.submit({"kind": "cooling"}).wait()
        print(job.status, job.result["final_temperature"])

It needs httpx, NumPy and tqdm only: importing it never imports TensorFlow or the server.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from thermoml.client import Client, Job, Jobs, Models
from thermoml.errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ThermomlError,
    Unauthorized,
    Unavailable,
)

try:
    __version__ = version("thermoml")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "InvalidRequest",
    "Job",
    "Jobs",
    "Models",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "ThermomlError",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
