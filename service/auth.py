"""API keys and scopes, checked once for every request by an app-wide dependency.

With `THERMOML_AUTH=required` a request needs `Authorization: Bearer <key>` or the session cookie
that the dashboard's sign-in sets; a missing or unknown key is 401, a missing scope 403. Scopes:
`read` (every GET), `train` (submit and cancel jobs, upload and delete data sets), `infer`
(model operations), `admin` (everything, and deleting models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.db import keys as key_repo
from service.db import tenancy
from service.errors import ServiceError

SESSION_COOKIE = "thermoml_session"
ALL_SCOPES = frozenset(key_repo.SCOPES)
OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/v1/session",
        "/signin",
    }
)
OPEN_PREFIXES = ("/static/", "/docs/assets/")
# (method, path pattern) -> scope; the first match wins, GET falls back to `read`.
RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"^/v1/jobs(/[^/]+/cancel)?$"), "train"),
    ("POST", re.compile(r"^/v1/datasets$"), "train"),
    ("DELETE", re.compile(r"^/v1/datasets/[^/]+$"), "train"),
    ("POST", re.compile(r"^/v1/models/[^/]+/[a-z]+$"), "infer"),
    ("DELETE", re.compile(r"^/v1/models/[^/]+$"), "admin"),
)
# Swagger UI's "Authorize" button; the scheme is declared on the app for the OpenAPI schema.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `thermoml keys create`.")


@dataclass(frozen=True)
class Principal:
    key_id: str | None
    name: str
    scopes: frozenset[str]
    tenant: str = tenancy.DEFAULT

    @property
    def idempotency_scope(self) -> str:
        return self.key_id or "global"

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def scope(self) -> tenancy.Scope:
        """Whose rows this caller reaches: its tenant's, or every tenant's for an admin."""
        return tenancy.Scope(tenant=self.tenant, everyone=self.is_admin)


ANONYMOUS = Principal(key_id=None, name="anonymous", scopes=ALL_SCOPES)


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs; None for open paths."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    for rule_method, pattern, scope in RULES:
        if method == rule_method and pattern.match(path):
            return scope
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    return "admin"


def secret_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(SESSION_COOKIE)


def principal_for(session: Session, secret: str) -> Principal | None:
    key = key_repo.find_active(session, secret=secret)
    if key is None:
        return None
    return Principal(key_id=key.id, name=key.name, scopes=frozenset(key.scopes), tenant=key.tenant)


async def authenticate(
    request: Request,
    _: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),  # for the OpenAPI schema
) -> Principal:
    """The caller, or ServiceError 401/403; sets `request.state.principal`."""
    settings = request.app.state.settings
    path = request.url.path
    if settings.auth != "required":
        request.state.principal = ANONYMOUS
        return ANONYMOUS
    if path == "/metrics":
        scope: str | None = "read" if settings.metrics_auth == "required" else None
    else:
        scope = required_scope(request.method, path)
    if scope is None:
        request.state.principal = ANONYMOUS
        return ANONYMOUS
    secret = secret_of(request)
    if not secret:
        raise ServiceError(
            "unauthorized", "this service needs an API key: send `Authorization: Bearer <key>`"
        )

    def lookup() -> Principal | None:
        with request.app.state.sessions() as session:
            return principal_for(session, secret)

    # Only this lookup blocks: the dependency itself is async, so an open request costs no
    # thread-pool hop.
    principal = await run_in_threadpool(lookup)
    if principal is None:
        raise ServiceError("unauthorized", "the API key is unknown or revoked")
    if scope not in principal.scopes and "admin" not in principal.scopes:
        raise ServiceError(
            "forbidden",
            f"this key lacks the `{scope}` scope (it has {', '.join(sorted(principal.scopes))})",
        )
    request.state.principal = principal
    return principal


def current(request: Request) -> Principal:
    return getattr(request.state, "principal", ANONYMOUS)  # type: ignore[no-any-return]
