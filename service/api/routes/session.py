"""Sign-in for browsers: an API key traded for a server-side session, whose random id is set in
an HttpOnly, SameSite=Strict cookie, so that the dashboard's live updates (EventSource, which
cannot send headers) work with auth on. The key itself never reaches the cookie."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from service.auth import SESSION_COOKIE, check_same_origin, session_token_of
from service.db import keys as key_repo
from service.db import sessions as signin_repo
from service.errors import ServiceError
from service.inputs import check_text

router = APIRouter(tags=["session"])
MAX_NEXT = 2000

SIGNIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>thermoml: sign in</title><meta name="viewport" content="width=device-width">
<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}
input,button{font-size:1rem;padding:.5rem;width:100%;box-sizing:border-box;margin:.3rem 0}</style>
</head><body><h1>thermoml</h1><p>Sign in with an API key (<code>thermoml keys create</code>).</p>
<form method="post" action="/v1/session"><input type="password" name="key" autocomplete="off"
placeholder="tml_…" required autofocus><input type="hidden" name="next" value="/">
<button type="submit">Sign in</button></form>{error}</body></html>"""


def local_path(next: str | None) -> str:
    """`next` if it is a path on this site, else `/`: one leading slash (`//host` is another
    site), no backslash (browsers read `/\\host` as `//host`), no scheme or host, no control
    characters (browsers drop tabs and newlines from URLs, so they could hide any of these)."""
    if not next or len(next) > MAX_NEXT or not next.startswith("/") or next.startswith("//"):
        return "/"
    if "\\" in next or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in next):
        return "/"
    parts = urlsplit(next)
    if parts.scheme or parts.netloc:
        return "/"
    return next


def _cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https" or bool(request.app.state.settings.cookie_secure)


@router.get("/signin", response_class=HTMLResponse, include_in_schema=False)
def signin_page(error: str | None = None) -> HTMLResponse:
    note = '<p role="alert">That key is unknown or revoked.</p>' if error else ""
    return HTMLResponse(SIGNIN_PAGE.replace("{error}", note))


@router.post("/v1/session", status_code=204)
def sign_in(request: Request, key: str = Form(...), next: str | None = Form(None)) -> Response:
    """Start a session from an API key (form field `key`) and set its cookie; 401 if the key
    is unknown, 403 from another site's page. With `next` (a path on this site), redirect there."""
    # A browser always says where a form post comes from; a client that says nothing holds no
    # cookie a page could borrow, so only a post that names another site is refused.
    check_same_origin(request, when_unknown=True)
    check_text(key, "form.key")
    settings = request.app.state.settings
    token = None
    with request.app.state.sessions.begin() as session:
        api_key = key_repo.find_active(session, secret=key)
        if api_key is not None:
            previous = session_token_of(request)
            if previous:
                signin_repo.end(session, token=previous)  # a new sign-in replaces the old one
            token = signin_repo.create(session, key_id=api_key.id, ttl=settings.session_ttl)
            key_repo.touch(session, api_key)
    if token is None:
        if next:
            return RedirectResponse("/signin?error=1", status_code=303)
        raise ServiceError("unauthorized", "the API key is unknown or revoked")
    response: Response = (
        RedirectResponse(local_path(next), status_code=303) if next else Response(status_code=204)
    )
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(settings.session_ttl),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(request),
    )
    return response


@router.delete("/v1/session", status_code=204)
def sign_out(request: Request) -> Response:
    """End the session of the request's cookie (it no longer signs anyone in) and clear it."""
    token = session_token_of(request)
    if token:
        check_same_origin(request)
        with request.app.state.sessions.begin() as session:
            signin_repo.end(session, token=token)
    response = Response(status_code=204)
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_cookie_secure(request)
    )
    return response
