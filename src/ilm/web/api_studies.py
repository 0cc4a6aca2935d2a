"""REST API: studies (``ilm studies``, ``ilm show``) and the archive summary. Role: viewer.

    GET /api/studies?patient_id=&date_from=&date_to=&modality=&limit=&offset=   newest first
    GET /api/studies/{study_uid}          series, tiers holding it, checksum state (404: unknown)
    GET /api/summary                      studies, series, instances and bytes by modality, year and tier
"""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Query, Request

from ilm.errors import NotFound
from ilm.models import StudyDetail, StudyFilter, StudySummary, SummaryRow
from ilm.web.api_common import ERRORS, ApiRoute, service_of
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["studies"], route_class=ApiRoute, responses=ERRORS,
                   dependencies=[require("viewer")])


@router.get("/studies", response_model=list[StudySummary])
def list_studies(request: Request,
                 patient_id: str | None = Query(None, max_length=64, description="Exact Patient ID."),
                 date_from: date | None = Query(None, description="Study date on or after."),
                 date_to: date | None = Query(None, description="Study date on or before."),
                 modality: str | None = Query(None, max_length=16, description="A modality in the study (CT, MR, MG ...)."),
                 limit: int = Query(100, ge=1, le=10_000), offset: int = Query(0, ge=0, le=10**9)) -> list[StudySummary]:
    """Stored studies, newest first, with where each lives (tiers)."""
    flt = StudyFilter(patient_id=patient_id, date_from=date_from, date_to=date_to, modality=modality,
                      limit=limit, offset=offset)
    return service_of(request).studies(flt)


@router.get("/studies/{study_uid}", response_model=StudyDetail)
def show_study(study_uid: str, request: Request) -> StudyDetail:
    """One study: its series, the tiers holding it (state, instances, bytes, last verified), checksum state."""
    d = service_of(request).study(study_uid)
    if d is None:
        raise NotFound(f"no study {study_uid!r} in the catalog")
    return d


@router.get("/summary", response_model=dict[str, list[SummaryRow]])
def summary(request: Request) -> dict[str, list[SummaryRow]]:
    """Studies, series, instances and bytes by modality, by study year and by tier."""
    return service_of(request).summary()
