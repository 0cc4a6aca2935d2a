"""REST API for restores from archive tiers.

    POST /api/restores   {"study_uids": ["1.2.3", ...], "requested_by": "dr-who"}
                         -> 202 {"restores": [status, ...]}, Retry-After: seconds until the last is due
    GET  /api/restores   ?all=true (also finished ones) &study_uid=... (newest of those studies)
                         -> 200 {"restores": [status, ...]}

A status is {"study_uid", "state" (requested | restoring | ready | failed |
expired | online), "archive_tier", "target_tier", "requested_by",
"requested_at", "ready_at", "completed_at", "expires_at", "retry_after"
(seconds, null when a new request is needed), "detail", "id"}.

Roles (ilm.web.auth): POST needs approver, GET viewer.

Errors: 404 an unknown study (nothing is requested), 422 a malformed body,
503 an archive store that cannot be reached, 409 a configuration without a
tier to restore to.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ilm.errors import ConfigError, IlmError, NotFound, StorageError
from ilm.service import ArchiveService
from ilm.web.api_common import UID_PATTERN
from ilm.web.auth import principal, require

__all__ = ["router", "RestoreRequest"]

router = APIRouter(prefix="/api", tags=["restores"])


class RestoreRequest(BaseModel):
    study_uids: list[Annotated[str, Field(pattern=UID_PATTERN, max_length=64)]] = Field(min_length=1, max_length=10_000)
    requested_by: str | None = Field(None, max_length=128)


def _service(request: Request) -> ArchiveService:
    service: ArchiveService = request.app.state.service
    return service


def _json(s: Any) -> dict[str, Any]:
    d = asdict(s)
    for k, v in d.items():
        if hasattr(v, "isoformat"):
            d[k] = v.isoformat()
    return d


@router.post("/restores", status_code=202, dependencies=[require("approver")])
def post_restores(body: RestoreRequest, request: Request) -> JSONResponse:
    """Start restores of studies from their archive tier (duplicates join the restore under way)."""
    client = request.client.host if request.client else "?"
    caller = principal(request)
    if caller.token_id is not None:  # the token vouches for who asks; requested_by only adds to it
        who = f"{body.requested_by} ({caller.who})" if body.requested_by else caller.who
    else:
        who = body.requested_by or f"rest:{client}"
    try:
        statuses = _service(request).recall(body.study_uids, who)
    except NotFound as exc:
        return JSONResponse({"detail": str(exc)}, status_code=404)
    except ConfigError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=409)
    except StorageError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=503)
    except IlmError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)
    headers = {}
    waits = [s.retry_after for s in statuses if s.retry_after]
    if waits:
        headers["Retry-After"] = str(max(1, math.ceil(max(waits))))
    return JSONResponse({"restores": [_json(s) for s in statuses]}, status_code=202, headers=headers)


@router.get("/restores", dependencies=[require("viewer")])
def get_restores(request: Request, all_: bool = Query(False, alias="all"),
                 study_uid: list[str] | None = Query(None)) -> JSONResponse:
    """Restores, newest first: those under way or ready (all=true: also failed and expired ones)."""
    statuses = _service(request).restores(active_only=not all_ and not study_uid, study_uids=study_uid or None)
    return JSONResponse({"restores": [_json(s) for s in statuses]})
