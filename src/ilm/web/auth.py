"""Roles on HTTP routes: every route declares the role it needs with ``require``.

    router = APIRouter(dependencies=[require("viewer")])          # every route of a router
    @app.post("/api/plans/{id}/apply", dependencies=[require("approver")])  # one route

A request presents an API token (``ilm tokens create``) as
``Authorization: Bearer <token>``. Without one, or with one that is unknown,
revoked or expired: 401 with ``WWW-Authenticate: Bearer``. With a valid
token whose role does not include the one required: 403. Either way the
route's handler never runs, so nothing changes (a STOW-RS body is not even
read). With ``[http] auth = false`` (loopback only) every request acts as
``anonymous`` with the admin role; the declarations still stand.

The caller is in ``request.state.principal`` (an ``ilm.security.Principal``);
``principal(request)`` returns it for audit entries ("who").

A test (tests/test_auth.py) walks every route of ``create_app`` and fails on
one without a ``require``; the only public routes are listed in ``PUBLIC``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import fastapi.routing
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ilm.errors import Unauthenticated
from ilm.security.roles import Principal, Role, parse_role

__all__ = ["require", "required_role", "principal", "PUBLIC", "ANONYMOUS", "RouteRole", "route_roles"]

# Paths served without a token: liveness, the API description (it holds no
# data, only what the open-source code says; Swagger UI's "Authorize" takes a
# token), the dashboard's sign-in page and its stylesheet (ilm.web.dashboard).
PUBLIC = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc", "/login", "/static",
                    "/health/ready"})

ANONYMOUS = Principal(name="anonymous", role=Role.ADMIN)

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An API token from 'ilm tokens create'.")
_REALM = 'Bearer realm="ilm"'


def _refuse(status: int, error: str, message: str) -> HTTPException:
    challenge = _REALM if error == "" else f'{_REALM}, error="{error}", error_description="{message}"'
    return HTTPException(status_code=status, detail=message, headers={"WWW-Authenticate": challenge})


def _log_refusal(request: Request, status: int, why: str) -> None:
    """A presented token refused: worth a line in the log (a request without one is not)."""
    client = request.client.host if request.client else "?"
    log.warning("HTTP %d for %s %s from %s: %s", status, request.method, request.url.path, client, why)


def require(role: str) -> DependsParam:
    """A FastAPI dependency admitting requests whose token's role includes ``role``."""
    need = parse_role(role)  # a typo fails at import, not at request time

    async def check(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        if not getattr(request.app.state, "auth", True):
            who = ANONYMOUS
        else:
            if credentials is None or credentials.scheme.lower() != "bearer":
                raise _refuse(401, "", "an API token is required: 'Authorization: Bearer <token>' (ilm tokens create)")
            service = request.app.state.service
            client = request.client.host if request.client else ""
            try:
                who = await run_in_threadpool(service.authenticate, credentials.credentials, address=client)
            except Unauthenticated as exc:
                _log_refusal(request, 401, str(exc))
                raise _refuse(401, "invalid_token", str(exc)) from None
            if not who.role.includes(need):
                _log_refusal(request, 403, f"token {who.name!r} ({who.role.label}) needs {need.label}")
                service.refused(who, need.label, address=client, subject=f"{request.method} {request.url.path}")
                raise HTTPException(
                    status_code=403,
                    detail=f"token {who.name!r} has the role {who.role.label}; this needs {need.label} or higher",
                    headers={"WWW-Authenticate": f'{_REALM}, error="insufficient_scope"'},
                )
        request.state.principal = who
        return who

    check.ilm_role = need  # type: ignore[attr-defined]  # read by required_role()
    check.__name__ = f"require_{need.label}"
    dependency: DependsParam = Depends(check)
    return dependency


def required_role(route: Any) -> Role | None:
    """The highest role a route's dependencies require (None: it declares none)."""
    found: list[Role] = []
    stack = list(getattr(getattr(route, "dependant", None), "dependencies", []))
    while stack:
        dep = stack.pop()
        role = getattr(dep.call, "ilm_role", None)
        if isinstance(role, Role):
            found.append(role)
        stack.extend(dep.dependencies)
    return max(found) if found else None


@dataclass(frozen=True, slots=True)
class RouteRole:
    """One route of an app as a request sees it: path, methods, the role it requires
    (None: none declared) and whether it is a FastAPI route at all (a mount is not)."""

    path: str
    methods: tuple[str, ...]
    role: Role | None
    api_route: bool


def route_roles(app: FastAPI) -> list[RouteRole]:
    """Every route of ``app``, those of included routers too, with its required role."""
    walk = getattr(fastapi.routing, "iter_route_contexts", None)  # FastAPI >= 0.16x keeps included routers nested
    routes: list[Any] = list(walk(app.routes)) if walk else list(app.routes)
    out = []
    for r in routes:
        original = getattr(r, "original_route", r)
        out.append(RouteRole(
            path=str(getattr(r, "path", None) or repr(original)),
            methods=tuple(sorted(getattr(r, "methods", None) or ())),
            role=required_role(r),
            api_route=isinstance(original, fastapi.routing.APIRoute),
        ))
    return out


def principal(request: Request) -> Principal:
    """Who made the request (set by ``require``)."""
    who = getattr(request.state, "principal", None)
    return who if isinstance(who, Principal) else Principal(name="unknown", role=Role.VIEWER)
