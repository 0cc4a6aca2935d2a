"""REST API: the audit trail (``ilm audit``, ``ilm audit --verify``). Role: viewer.

    GET /api/audit?study_uid=&plan_id=&limit=&offset=   entries, oldest first: who, what, when, rule, plan
    GET /api/audit/verify                               whether the hash chain is intact, and every break
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from ilm.web.api_common import ERRORS, ApiRoute, Row, UtcDateTime, service_of
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["audit"], route_class=ApiRoute, responses=ERRORS,
                   dependencies=[require("viewer")])


class EntryOut(Row):
    id: int | None
    at: UtcDateTime
    actor: str
    action: str
    study_uid: str | None
    plan_id: str | None
    rule_id: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class BreakOut(Row):
    entry_id: int | None
    problem: str


class Verified(BaseModel):
    intact: bool
    breaks: list[BreakOut]


@router.get("/audit", response_model=list[EntryOut])
def audit(request: Request, study_uid: str | None = Query(None, max_length=64),
          plan_id: str | None = Query(None, max_length=64),
          limit: int = Query(1000, ge=1, le=100_000), offset: int = Query(0, ge=0, le=10**9)) -> Any:
    """Audit entries (about one study or plan when given), oldest first, a page at a time."""
    entries = service_of(request).audit(study_uid=study_uid, plan_id=plan_id, limit=limit, offset=offset)
    return [EntryOut.model_validate(e) for e in entries]


@router.get("/audit/verify", response_model=Verified)
def verify(request: Request) -> Verified:
    """Check the hash chain: no entry changed, removed or reordered."""
    breaks = service_of(request).audit_verify()
    return Verified(intact=not breaks, breaks=[BreakOut.model_validate(b) for b in breaks])
