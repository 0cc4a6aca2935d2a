"""REST API: fixity (``ilm verify``; docs/security.md 'Fixity').

    GET  /api/fixity     copies by fixity state, how many are due, the scrub's progress          viewer
    POST /api/verify     {"tier", "study_uid", "sample_percent", "seed", "include_archive", "repair"}
                         re-read copies now and check their SHA-256; bad or missing ones are
                         marked, audited and (repair=true) repaired                             approver

A verify runs within the request: name a study or a sample for a large archive
(ilm serve's scrub checks everything in the background at a bounded rate).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ilm.web.api_common import ERRORS, ApiRoute, actor, service_of, uid_field
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["fixity"], route_class=ApiRoute, responses=ERRORS)


class VerifyRequest(BaseModel):
    tier: str | None = Field(default=None, max_length=64, description="Only this tier (an archive tier only when named).")
    study_uid: str | None = uid_field(default=None, description="Only the copies of this study.")
    sample_percent: float = Field(default=100.0, gt=0, le=100, description="Check this share of the copies, at random.")
    seed: int | None = Field(default=None, ge=0, le=2**31, description="The same seed checks the same copies.")
    include_archive: bool = Field(default=False, description="Also read archive tiers (may cost retrieval fees).")
    repair: bool = Field(default=True, description="Repair bad or missing copies from another verified copy.")
    by: str | None = Field(default=None, max_length=128)


@router.get("/fixity", response_model=dict[str, Any], dependencies=[require("viewer")])
def fixity(request: Request) -> Any:
    """Copies by fixity state (verified, bad, missing), how many are due for a check, the scrub's progress."""
    return asdict(service_of(request).fixity_status())


@router.post("/verify", response_model=dict[str, Any], dependencies=[require("approver")])
def verify(request: Request, body: VerifyRequest | None = None) -> Any:
    """Re-read copies and check their SHA-256 against the catalog (``remaining``: still not good after it)."""
    b = body or VerifyRequest()
    report = service_of(request).verify(tier=b.tier, study_uid=b.study_uid, sample_percent=b.sample_percent,
                                        seed=b.seed, include_archive=b.include_archive, repair=b.repair,
                                        by=actor(request, b.by))
    return asdict(report) | {"remaining": report.remaining, "clean": report.clean}
