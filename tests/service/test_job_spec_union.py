"""The job-spec union follows the registry, and a kind registered by a test (`tiny`) never becomes
part of the API, in whichever order the tests run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from ml.core.registry import list_kinds
from service.schemas.jobs import job_spec_union
from tests.tinykind import register_tiny, unregister_tiny

ROOT = Path(__file__).resolve().parents[2]
TINY = {"kind": "tiny", "dataset": "builtin:moons"}


def test_the_union_is_of_the_kinds_registered_now() -> None:
    assert "tiny" not in list_kinds()
    with pytest.raises(ValidationError):
        TypeAdapter(job_spec_union()).validate_python(TINY)
    register_tiny()
    try:
        assert TypeAdapter(job_spec_union()).validate_python(TINY).kind == "tiny"
    finally:
        unregister_tiny()
    with pytest.raises(ValidationError):  # not a union cached while `tiny` was registered
        TypeAdapter(job_spec_union()).validate_python(TINY)


# `tiny` registered before anything has imported the API, as when a test of the workers that
# uses the `tiny` fixture runs first in a process; the API is then built, and `tiny` removed.
FIRST_TINY_THEN_THE_API = """
import json
from tests.tinykind import register_tiny, unregister_tiny
register_tiny()
from fastapi.openapi.utils import get_openapi
from service.api.routes.jobs import router
unregister_tiny()
schema = get_openapi(title="thermoml", version="0", routes=router.routes)
body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
print(json.dumps(sorted(body["examples"])))
"""


def test_a_kind_registered_by_a_test_never_reaches_the_api() -> None:
    out = subprocess.run(
        [sys.executable, "-c", FIRST_TINY_THEN_THE_API],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout.splitlines()[-1]) == list_kinds()
