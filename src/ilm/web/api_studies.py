"""REST API: studies (``ilm studies``, ``ilm show``) and the archive summary. Role: viewer.

    GET /api/studies?patient_id=&date_from=&date_to=&modality=&limit=&offset=   newest first
    GET /api/studies/{study_uid}          series, tiers holding it, checksum state (404: unknown)
    GET /api/summary                      studies, series, instances and bytes by modality, year and tier
"""

from __future__ import annotations

from datetime import date

from typing import Any

from fastapi import APIRouter, Query, Request

from ilm.errors import NotFound
from ilm.models import StudyFilter, SummaryRow
from ilm.web.api_common import ERRORS, ApiRoute, Row, UidPath, UtcDateTime, service_of
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["studies"], route_class=ApiRoute, responses=ERRORS,
                   dependencies=[require("viewer")])


class StudyOut(Row):
    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: date | None
    modalities: list[str]
    description: str
    accession_number: str
    series_count: int
    instance_count: int
    size_bytes: int
    tiers: list[str]
    received_at: UtcDateTime | None
    last_accessed_at: UtcDateTime | None


class SeriesOut(Row):
    series_instance_uid: str
    modality: str
    description: str
    number: int | None
    instance_count: int
    size_bytes: int


class LocationOut(Row):
    tier: str
    state: str
    instance_count: int
    size_bytes: int
    verified_at_newest: UtcDateTime | None


class StudyDetailOut(Row):
    summary: StudyOut
    patient_birth_date: date | None
    patient_sex: str
    patient_age: str
    institution_name: str
    station_names: list[str]
    body_parts: list[str]
    sop_classes: list[str]
    series: list[SeriesOut]
    locations: list[LocationOut]
    checksum_state: str
    extra: dict[str, str]


@router.get("/studies", response_model=list[StudyOut])
def list_studies(request: Request,
                 patient_id: str | None = Query(None, max_length=64, description="Exact Patient ID."),
                 date_from: date | None = Query(None, description="Study date on or after."),
                 date_to: date | None = Query(None, description="Study date on or before."),
                 modality: str | None = Query(None, max_length=16, description="A modality in the study (CT, MR, MG ...)."),
                 limit: int = Query(100, ge=1, le=10_000), offset: int = Query(0, ge=0, le=10**9)) -> Any:
    """Stored studies, newest first, with where each lives (tiers)."""
    flt = StudyFilter(patient_id=patient_id, date_from=date_from, date_to=date_to, modality=modality,
                      limit=limit, offset=offset)
    return [StudyOut.model_validate(st) for st in service_of(request).studies(flt)]


@router.get("/studies/{study_uid}", response_model=StudyDetailOut)
def show_study(request: Request, study_uid: str = UidPath) -> Any:
    """One study: its series, the tiers holding it (state, instances, bytes, last verified), checksum state."""
    d = service_of(request).study(study_uid)
    if d is None:
        raise NotFound(f"no study {study_uid!r} in the catalog")
    return StudyDetailOut.model_validate(d)


@router.get("/summary", response_model=dict[str, list[SummaryRow]])
def summary(request: Request) -> dict[str, list[SummaryRow]]:
    """Studies, series, instances and bytes by modality, by study year and by tier."""
    return service_of(request).summary()
