"""Who is looking at the dashboard: an API token kept in a cookie, and CSRF tokens for its forms.

A browser cannot send ``Authorization: Bearer`` on a page load, so the login
page takes an API token (``ilm tokens create``), checks it, and keeps it in an
``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over HTTPS). Every page
declares its role with ``page_require`` exactly as API routes do with
``ilm.web.auth.require`` (the route-role test reads the same ``ilm_role``
marker). A page without a valid token redirects to the login page; a valid
token without the role gets 403. A request that is not a browser's page load
(an ``Authorization`` header, or no ``text/html`` in ``Accept``) is answered
exactly as an API route answers it (401 with ``WWW-Authenticate``, 403). With ``[http] auth = false`` (loopback only)
every visitor is the anonymous admin, as on the API.

Forms that change something carry a CSRF token: an HMAC of the visitor's name
under a secret made when the app starts; a POST without the right one (or
from another origin) is refused with 403 before anything runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import quote, urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.params import Depends as DependsParam
from starlette.concurrency import run_in_threadpool

from ilm.errors import Unauthenticated
from ilm.security.roles import Principal, Role, parse_role
from ilm.web.auth import ANONYMOUS, require
from ilm.web.auth import _bearer as bearer

COOKIE = "ilm_token"


class LoginRequired(Exception):
    """Raised by ``page_require`` to send the browser to the login page."""

    def __init__(self, next_url: str, message: str = "") -> None:
        super().__init__(message)
        self.next_url = next_url
        self.message = message


def _secret(request: Request) -> bytes:
    state = request.app.state
    if not hasattr(state, "csrf_secret"):
        state.csrf_secret = secrets.token_bytes(32)
    secret: bytes = state.csrf_secret
    return secret


def csrf_token(request: Request, who: Principal) -> str:
    return hmac.new(_secret(request), f"{who.name}|{who.role.label}".encode(), hashlib.sha256).hexdigest()[:40]


def check_csrf(request: Request, who: Principal, token: str) -> None:
    """403 unless the form's CSRF token is this visitor's and the request comes from this site."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin and urlsplit(origin).netloc != request.url.netloc:
        raise HTTPException(403, f"form posted from another site ({urlsplit(origin).netloc}); refused")
    if not hmac.compare_digest(token or "", csrf_token(request, who)):
        raise HTTPException(403, "the form's CSRF token is missing or stale: reload the page and try again")


async def visitor(request: Request) -> Principal | None:
    """The principal of the request's cookie (or Bearer header), None when there is none or it is not valid."""
    if not getattr(request.app.state, "auth", True):
        return ANONYMOUS
    token = request.cookies.get(COOKIE, "")
    header = request.headers.get("authorization", "")
    if not token and header.lower().startswith("bearer "):
        token = header[7:].strip()
    if not token:
        return None
    try:
        who: Principal = await run_in_threadpool(request.app.state.service.authenticate, token,
                                                 address=request.client.host if request.client else "")
    except Unauthenticated:
        return None
    return who


def page_require(role: str) -> DependsParam:
    """A dependency for dashboard pages: the visitor's token must include ``role``."""
    need = parse_role(role)
    api_check = require(role).dependency  # the API's own check, for clients that are not browsers

    async def check(request: Request) -> Principal:
        if request.headers.get("authorization") or "text/html" not in request.headers.get("accept", ""):
            # Not a browser page load: answer as every API route does (401/403, WWW-Authenticate).
            assert api_check is not None
            found: Principal = await api_check(request, await bearer(request))
            return found
        who = await visitor(request)
        if who is None:
            raise LoginRequired(str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""))
        if not who.role.includes(need):
            request.app.state.service.refused(who, need.label, address=request.client.host if request.client else "",
                                              subject=f"{request.method} {request.url.path}")
            raise HTTPException(403, f"{who.name!r} has the role {who.role.label}; this page needs {need.label} or higher")
        request.state.principal = who
        return who

    check.ilm_role = need  # type: ignore[attr-defined]  # read by ilm.web.auth.required_role
    check.__name__ = f"page_require_{need.label}"
    dependency: DependsParam = Depends(check)
    return dependency


def login_url(next_url: str) -> str:
    return "/login?next=" + quote(next_url, safe="/")


def safe_next(next_url: str) -> str:
    """Only a path on this site (no scheme, no host, no '//') is followed after login."""
    if not next_url.startswith("/") or next_url.startswith("//") or "\\" in next_url:
        return "/"
    return next_url


def role_of(who: Principal, role: str) -> bool:
    return who.role.includes(parse_role(role))


__all__ = ["COOKIE", "LoginRequired", "check_csrf", "csrf_token", "login_url", "page_require", "role_of",
           "safe_next", "visitor", "Role"]
