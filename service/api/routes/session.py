"""Sign-in for browsers: an API key traded for an HttpOnly, SameSite=Strict session cookie, so
that the dashboard's live updates (EventSource, which cannot send headers) work with auth on."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from service.auth import SESSION_COOKIE, principal_for
from service.errors import ServiceError

router = APIRouter(tags=["session"])
COOKIE_MAX_AGE_S = 7 * 24 * 3600

SIGNIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>thermoml: sign in</title><meta name="viewport" content="width=device-width">
<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}
input,button{font-size:1rem;padding:.5rem;width:100%;box-sizing:border-box;margin:.3rem 0}</style>
</head><body><h1>thermoml</h1><p>Sign in with an API key (<code>thermoml keys create</code>).</p>
<form method="post" action="/v1/session"><input type="password" name="key" autocomplete="off"
placeholder="tml_…" required autofocus><input type="hidden" name="next" value="/">
<button type="submit">Sign in</button></form>{error}</body></html>"""


@router.get("/signin", response_class=HTMLResponse, include_in_schema=False)
def signin_page(error: str | None = None) -> HTMLResponse:
    note = '<p role="alert">That key is unknown or revoked.</p>' if error else ""
    return HTMLResponse(SIGNIN_PAGE.replace("{error}", note))


@router.post("/v1/session", status_code=204)
def sign_in(request: Request, key: str = Form(...), next: str | None = Form(None)) -> Response:
    """Set the session cookie from an API key (form field `key`); 401 if the key is unknown."""
    with request.app.state.sessions() as session:
        principal = principal_for(session, key)
    if principal is None:
        if next:
            return RedirectResponse("/signin?error=1", status_code=303)
        raise ServiceError("unauthorized", "the API key is unknown or revoked")
    response: Response = (
        RedirectResponse(next if next.startswith("/") else "/", status_code=303)
        if next
        else Response(status_code=204)
    )
    response.set_cookie(
        SESSION_COOKIE,
        key,
        max_age=COOKIE_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.delete("/v1/session", status_code=204)
def sign_out() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE)
    return response
