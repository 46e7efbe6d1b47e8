"""The OpenAPI document: operation ids, tags, error answers and security, decided here.

The operation ids become names in clients generated from `/openapi.json` (openapi-python-client
makes `thermoml_client.api.jobs.submit_job`): a route's function name, or the name `RENAMED`
gives it. Every operation declares the errors it can answer, each the `{"error": …}` envelope
(never FastAPI's `HTTPValidationError`: the service answers 422 with the envelope too). With
`THERMOML_AUTH=required` the guarded operations declare the bearer scheme; with auth disabled
no operation does, so that a generated client needs no key.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.auth import required_scope
from service.config import Settings
from service.schemas.common import ERROR_DESCRIPTIONS, ErrorBody
from service.schemas.inference import Rows

# Where a route's function name is not the name a client should call.
RENAMED = {
    "healthz": "liveness",
    "readyz": "readiness",
    "get_metrics": "job_metrics",
    "metrics_png": "job_metrics_png",
    "picture": "model_picture",
}
TAGS: list[dict[str, str]] = [
    {"name": "jobs", "description": "Submit, list, read and cancel jobs."},
    {
        "name": "metrics",
        "description": "A job's thermodynamic metric history: JSON, CSV, PNG, live.",
    },
    {"name": "models", "description": "The model registry."},
    {
        "name": "inference",
        "description": "Model operations: encode, reconstruct, score, predict, drift, "
        "generate (JSON, `.npy` or Arrow rows) and the models' pictures.",
    },
    {"name": "datasets", "description": "Built-in and uploaded data sets."},
    {"name": "keys", "description": "API keys (admin)."},
    {"name": "session", "description": "Browser sign-in with an API key."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
]
SCHEME = "HTTPBearer"  # the name FastAPI gives service.auth.bearer_scheme
ERROR_REF = {"$ref": f"#/components/schemas/{ErrorBody.__name__}"}
# Error statuses an operation answers beyond the ones every operation may (422 and 503; 401 and
# 403 when it is guarded; 404 with a path parameter; 413 with a body).
EXTRA_ERRORS: dict[str, tuple[int, ...]] = {
    "submit_job": (409, 429),
    "cancel_job": (409,),
    "delete_dataset": (409,),
    "encode": (409, 429),
    "reconstruct": (409, 429),
    "score": (409, 429),
    "predict": (409, 429),
    "drift": (409, 429),
    "generate": (409, 429),
    "model_picture": (409,),
    "sign_in": (401, 403),
    "sign_out": (403,),
}
NO_DATABASE = frozenset({"liveness"})


def operation_id(route: APIRoute) -> str:
    """FastAPI's `generate_unique_id_function`: the operation id of a route."""
    return RENAMED.get(route.name, route.name)


def install(app: FastAPI, settings: Settings) -> None:
    """Make `app.openapi()` build the document described in this module's docstring."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(build(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def finish(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The document FastAPI made, with shared components, errors and security settled."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas[Rows.__name__] = Rows.model_json_schema(ref_template="#/components/schemas/{model}")
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            guarded = _guarded(settings, method.upper(), path)
            _errors(operation, path, guarded)
            _media_schemas(operation)
            if guarded:
                operation["security"] = [{SCHEME: []}]
            else:
                operation.pop("security", None)
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def _guarded(settings: Settings, method: str, path: str) -> bool:
    if path == "/metrics":
        return settings.metrics_auth == "required"
    return settings.auth == "required" and required_scope(method, path) is not None


def _errors(operation: dict[str, Any], path: str, guarded: bool) -> None:
    """The operation's error answers: the ones it can give, each the envelope."""
    name = operation.get("operationId", "")
    wanted = {422} | ({503} if name not in NO_DATABASE else set())
    wanted |= {401, 403} if guarded else set()
    wanted |= {404} if "{" in path else set()
    wanted |= {413} if "requestBody" in operation else set()
    wanted |= set(EXTRA_ERRORS.get(name, ()))
    responses = operation.setdefault("responses", {})
    for status in [s for s in responses if s.isdigit() and int(s) >= 400]:
        if int(status) not in wanted:
            del responses[status]
    for status in sorted(wanted):
        answer = responses.setdefault(str(status), {"description": ERROR_DESCRIPTIONS[status]})
        answer["content"] = {"application/json": {"schema": ERROR_REF}}
    operation["responses"] = dict(sorted(responses.items()))


def _media_schemas(operation: dict[str, Any]) -> None:
    """A schema for every answer media type that has none: text as a string, others binary."""
    for answer in operation.get("responses", {}).values():
        for media_type, content in answer.get("content", {}).items():
            if not content.get("schema") and "json" not in media_type:
                text = media_type.startswith("text/")
                content["schema"] = (
                    {"type": "string"} if text else {"type": "string", "format": "binary"}
                )
