"""What every REST router (``ilm.web.api_*``) shares: errors as HTTP statuses, the caller, the service.

Routers use ``ApiRoute`` as their route class, so a handler just calls the
service and an ``IlmError`` it raises becomes a JSON ``{"detail": ...}`` with
the status that fits (docs/api.md):

    400  bad input: a policy with errors (with ``issues``), a bad value, a path outside ILM_HOME
    422  a request that does not fit the route's schema (FastAPI's validation; a UID not digits and dots)
    404  no such study, plan, hold or token
    409  refused in the state things are in: a plan whose policy changed, applied already,
         a study not in quarantine, a configuration without what the request needs
    503  the catalog or a tier cannot be reached (retry later)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Path, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ilm.errors import (
    CatalogError, ConfigError, Forbidden, IlmError, InvalidQuery, NotFound, NothingToApply, StorageError,
    Unauthenticated,
)
from ilm.lifecycle.apply import PlanChanged
from ilm.policy import PolicyError
from ilm.service import ArchiveService
from ilm.web.auth import principal

__all__ = ["ApiRoute", "Row", "UtcDateTime", "UID_PATTERN", "UidPath", "uid_field", "error_status", "error_body", "service_of", "actor", "ERRORS"]

log = logging.getLogger(__name__)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t  # SQLite returns naive UTC


# A timestamp as RFC 3339 with its offset (the catalog holds UTC; SQLite gives it back without a zone).
UtcDateTime = Annotated[datetime, AfterValidator(_utc)]


# A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1). Checked at the door: a
# NUL or a 10 kB string never reaches the catalog (PostgreSQL refuses NUL in text).
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
UidPath = Path(pattern=UID_PATTERN, max_length=64, description="A Study Instance UID (digits and dots).")


def uid_field(**kw: Any) -> Any:
    """A body field holding a UID (``Field`` arguments in ``kw``: default, description)."""
    return Field(pattern=UID_PATTERN, max_length=64, **kw)


class Row(BaseModel):
    """A response model read from a dataclass of the service layer."""

    model_config = ConfigDict(from_attributes=True)


class _Detail(BaseModel):
    detail: str
    issues: list[str] | None = None


# Documented on every route of the API routers (so /openapi.json lists them).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": _Detail, "description": "Bad input; `detail` names the problem."},
    404: {"model": _Detail, "description": "No such study, plan, hold or token."},
    409: {"model": _Detail, "description": "Refused in the current state (plan changed, applied already ...)."},
    503: {"model": _Detail, "description": "The catalog or a tier cannot be reached."},
}


def _catalog_failure(exc: BaseException) -> bool:
    # The web layer never imports SQLAlchemy: a driver error is recognised by its module.
    return type(exc).__module__.split(".")[0] in ("sqlalchemy", "psycopg", "sqlite3")


def error_status(exc: BaseException) -> int | None:
    """The HTTP status of an exception a service call raised (None: a bug, left to become a 500)."""
    if isinstance(exc, Unauthenticated):
        return 401
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, (PlanChanged, NothingToApply, ConfigError)):
        return 409
    if _catalog_failure(exc) and type(exc).__name__ == "DataError":
        return 400  # a value the database cannot hold (an integer out of range, a NUL byte)
    if isinstance(exc, (CatalogError, StorageError)) or _catalog_failure(exc):
        return 503
    if isinstance(exc, (PolicyError, InvalidQuery, IlmError, ValueError)):
        return 400
    return None


def error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, PolicyError):
        return {"detail": f"the policy has {len(exc.issues)} error(s); nothing was done",
                "issues": [str(i) for i in exc.issues]}
    if _catalog_failure(exc) and type(exc).__name__ == "DataError":
        return {"detail": "a value in the request cannot be stored or matched by the catalog (out of range, NUL byte)"}
    if _catalog_failure(exc):
        return {"detail": f"catalog unavailable: {type(exc).__name__}"}
    return {"detail": str(exc)}


class ApiRoute(APIRoute):
    """A route whose service errors become JSON answers with the status that fits."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def mapped(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                status = error_status(exc)
                if status is None:
                    raise
                if status >= 500:
                    log.warning("%s %s: %s", request.method, request.url.path, exc)
                return JSONResponse(error_body(exc), status_code=status)

        return mapped


def service_of(request: Request) -> ArchiveService:
    service: ArchiveService = request.app.state.service
    return service


def actor(request: Request, given: str | None = None) -> str:
    """Who does this, for the audit trail: the token's name (``token:NAME``), with ``given``
    (a person named in the request) in front; without auth, ``given`` or the client address."""
    caller = principal(request)
    if caller.token_id is not None:
        return f"{given} ({caller.who})" if given else caller.who
    client = request.client.host if request.client else "?"
    return given or f"rest:{client}"
