"""API keys and scopes, checked once for every request by an app-wide dependency.

With `THERMOML_AUTH=required` a request needs `Authorization: Bearer <key>` or the session cookie
that the dashboard's sign-in sets; a missing or unknown key is 401, a missing scope 403. Scopes:
`read` (every GET), `train` (submit and cancel jobs, upload and delete data sets), `infer`
(model operations), `admin` (everything, keys, and deleting models).

The cookie holds the id of a server-side session (`service.db.sessions`), never the key. A
browser sends it with any request to this host, including one a page on another site makes it
send: so a cookie-authenticated request that changes state must come from this origin
(`Origin`, or `Sec-Fetch-Site: same-origin` when a browser sends no `Origin`), or it is 403.
A bearer key is sent only by a client that holds it, and needs no such check.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.db import keys as key_repo
from service.db import sessions as signin_repo
from service.db import tenancy
from service.db.tables import ApiKey
from service.errors import ServiceError

log = logging.getLogger(__name__)

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
# "*" matches every method (HEAD too, which answers what GET does).
RULES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("*", re.compile(r"^/v1/keys(/[^/]+)?$"), "admin"),
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
        if rule_method in ("*", method) and pattern.match(path):
            return scope
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    return "admin"


def secret_of(request: Request) -> str | None:
    """The bearer key of the request, if it sends one."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def session_token_of(request: Request) -> str | None:
    """The sign-in session id in the request's cookie, if any."""
    return request.cookies.get(SESSION_COOKIE) or None


def principal_of(key: ApiKey) -> Principal:
    return Principal(key_id=key.id, name=key.name, scopes=frozenset(key.scopes), tenant=key.tenant)


def principal_for(session: Session, secret: str) -> Principal | None:
    """The caller holding this API key, or None if it is unknown or revoked."""
    key = key_repo.find_active(session, secret=secret)
    if key is None:
        return None
    return principal_of(key)


def _resolve(session: Session, *, secret: str | None, token: str | None) -> Principal | None:
    """The caller of a bearer key or a sign-in session; records the key's use (throttled)."""
    key = (
        key_repo.find_active(session, secret=secret)
        if secret
        else signin_repo.find_key(session, token=token)
        if token
        else None
    )
    if key is None:
        return None
    principal = principal_of(key)
    try:
        key_repo.touch(session, key)
        session.commit()
    except DBAPIError as exc:  # bookkeeping: never the reason a request fails
        session.rollback()
        log.warning("could not record the use of key %s: %s", key.id, exc.orig or exc)
    return principal


# --- same-origin check for cookie-authenticated writes ------------------------------------------

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, host: str | None, port: int | None) -> str | None:
    scheme = scheme.lower()
    if not host or scheme not in DEFAULT_PORTS:
        return None
    return f"{scheme}://{host.lower()}:{port or DEFAULT_PORTS[scheme]}"


def own_origin(request: Request) -> str | None:
    """scheme://host:port this request was sent to (the port always written out)."""
    return _origin(request.url.scheme, request.url.hostname, request.url.port)


def origin_of(header: str) -> str | None:
    """An `Origin` header as scheme://host:port; None for `null` or anything malformed."""
    try:
        parts = urlsplit(header.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        return None
    return _origin(parts.scheme, parts.hostname, port)


def same_origin(request: Request, *, when_unknown: bool = False) -> bool:
    """Whether the browser says this request comes from a page of this origin: its `Origin`,
    else its `Sec-Fetch-Site`; `when_unknown` when it sends neither."""
    origin = request.headers.get("origin")
    if origin is not None:
        mine = own_origin(request)
        return mine is not None and origin_of(origin) == mine
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site.strip().lower() == "same-origin"
    return when_unknown


def check_same_origin(request: Request, *, when_unknown: bool = False) -> None:
    """ServiceError 403 unless `same_origin(request)`."""
    if not same_origin(request, when_unknown=when_unknown):
        raise ServiceError(
            "forbidden",
            "a request signed in by cookie that changes state must come from this site's own "
            "pages (its Origin must be this origin); API clients send `Authorization: Bearer`",
        )


async def authenticate(
    request: Request,
    _: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),  # for the OpenAPI schema
) -> Principal:
    """The caller, or ServiceError 401/403; sets `request.state.principal`."""
    settings = request.app.state.settings
    path = request.url.path
    guarded_metrics = path == "/metrics" and settings.metrics_auth == "required"
    if settings.auth != "required" and not guarded_metrics:
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
    token = None if secret else session_token_of(request)
    if not secret and not token:
        raise ServiceError(
            "unauthorized", "this service needs an API key: send `Authorization: Bearer <key>`"
        )
    if token and request.method in STATE_CHANGING:
        check_same_origin(request)  # before any database work: a forged request costs nothing

    def lookup() -> Principal | None:
        with request.app.state.sessions() as session:
            return _resolve(session, secret=secret, token=token)

    # Only this lookup blocks: the dependency itself is async, so an open request costs no
    # thread-pool hop.
    principal = await run_in_threadpool(lookup)
    if principal is None:
        raise ServiceError(
            "unauthorized",
            "the API key is unknown or revoked"
            if secret
            else "the session has ended (signed out, expired, or its key revoked): sign in again",
        )
    if scope not in principal.scopes and "admin" not in principal.scopes:
        raise ServiceError(
            "forbidden",
            f"this key lacks the `{scope}` scope (it has {', '.join(sorted(principal.scopes))})",
        )
    request.state.principal = principal
    return principal


def current(request: Request) -> Principal:
    return getattr(request.state, "principal", ANONYMOUS)  # type: ignore[no-any-return]
