"""REST API: holds, labels, quarantine and purge (``ilm hold``, ``ilm label``, ``ilm restore``, ``ilm purge``).

    GET    /api/holds?all=                     active holds (all=true: released ones too)        viewer
    POST   /api/holds                          {"study_uid" | "patient_id", "issuer", "reason", "by"} -> 201  operator
    DELETE /api/holds/{hold_id}                release a hold (it stays in the history)          operator
    POST   /api/holds/sync                     mirror holds to S3 Object Lock legal holds again  operator
    PUT    /api/studies/{study_uid}/labels/{name}    add a label                                 operator
    DELETE /api/studies/{study_uid}/labels/{name}    remove a label                              operator
    GET    /api/quarantine                     expired studies, restorable until purged          viewer
    POST   /api/quarantine/{study_uid}/restore bring a quarantined study back                   approver
    GET    /api/purge                          what a purge would delete now                     viewer
    POST   /api/purge                          delete what is past quarantine (holds still veto) approver
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field, model_validator

from ilm.errors import StorageError
from ilm.web.api_common import ERRORS, ApiRoute, Row, UidPath, UtcDateTime, actor, service_of, uid_field
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["retention"], route_class=ApiRoute, responses=ERRORS)


class HoldOut(Row):
    id: int
    scope: str = Field(description="study or patient")
    target: str = Field(description="The Study Instance UID, or the patient key (issuer and Patient ID).")
    reason: str
    created_by: str
    created_at: UtcDateTime
    released_at: UtcDateTime | None
    released_by: str | None


class HoldCreate(BaseModel):
    study_uid: str | None = uid_field(default=None)
    patient_id: str | None = Field(default=None, min_length=1, max_length=64)
    issuer: str = Field(default="", max_length=64, description="Issuer of the Patient ID, when the archive has several.")
    reason: str = Field(min_length=1, max_length=1000, description="Why: a case number, a request.")
    by: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _one(self) -> "HoldCreate":
        if (self.study_uid is None) == (self.patient_id is None):
            raise ValueError("give exactly one of study_uid or patient_id")
        return self


class HoldPlaced(BaseModel):
    id: int
    mirror_problem: str | None = Field(default=None, description="Placed, but the S3 legal hold could not be set on every object.")


class MirrorOut(Row):
    held: int
    released: int
    problems: list[str]


class Done(BaseModel):
    study_uid: str
    detail: str


class QuarantinedOut(Row):
    study_uid: str
    state: str
    quarantined_at: UtcDateTime | None
    quarantine_until: UtcDateTime | None
    rule: str | None
    plan: str | None
    instance_count: int
    size_bytes: int


class PurgeOut(Row):
    purged: list[str]
    bytes_freed: int
    problems: list[str]
    waiting: int
    released: int


ByQuery = Query(None, max_length=128, description="Who does this, for the audit trail (the token's name is recorded too).")
Label = Path(min_length=1, max_length=64, description="The label (1-64 characters, no backslash).")


@router.get("/holds", response_model=list[HoldOut], dependencies=[require("viewer")])
def list_holds(request: Request, all_: bool = Query(False, alias="all")) -> Any:
    """Legal holds: active ones, or all with all=true."""
    return [HoldOut.model_validate(h) for h in service_of(request).holds(active_only=not all_)]


@router.post("/holds", status_code=201, response_model=HoldPlaced, dependencies=[require("operator")])
def add_hold(body: HoldCreate, request: Request) -> Any:
    """Place a legal hold on a study or on every study of a patient: it vetoes every deletion."""
    service = service_of(request)
    who = actor(request, body.by)
    scope, target = ("study", body.study_uid or "") if body.study_uid else \
        ("patient", service.patient_key(body.patient_id or "", body.issuer))
    try:
        return HoldPlaced(id=service.hold_add(scope, target, body.reason, who))
    except StorageError as exc:  # placed in the catalog; the S3 legal hold failed on some objects
        latest = max((h.id for h in service.holds() if h.scope == scope and h.target == target), default=0)
        return HoldPlaced(id=latest, mirror_problem=str(exc))


@router.delete("/holds/{hold_id}", response_model=HoldOut, dependencies=[require("operator")])
def remove_hold(request: Request, hold_id: int = Path(ge=1, le=2**31 - 1), by: str | None = ByQuery) -> Any:
    """Release a hold by its id (404: no active hold with that id)."""
    return HoldOut.model_validate(service_of(request).hold_remove(hold_id, actor(request, by)))


@router.post("/holds/sync", response_model=MirrorOut, dependencies=[require("operator")])
def sync_holds(request: Request) -> Any:
    """Set the S3 Object Lock legal hold of every held study's objects on WORM tiers again."""
    return MirrorOut.model_validate(service_of(request).hold_sync())


@router.put("/studies/{study_uid}/labels/{name}", response_model=Done, dependencies=[require("operator")])
def add_label(request: Request, study_uid: str = UidPath, name: str = Label, by: str | None = ByQuery) -> Done:
    """Label a study (policies match labels: ``labels: teaching``)."""
    service_of(request).label(study_uid, name, present=True, by=actor(request, by))
    return Done(study_uid=study_uid, detail=f"labelled {name!r}")


@router.delete("/studies/{study_uid}/labels/{name}", response_model=Done, dependencies=[require("operator")])
def remove_label(request: Request, study_uid: str = UidPath, name: str = Label, by: str | None = ByQuery) -> Done:
    """Remove a label from a study."""
    service_of(request).label(study_uid, name, present=False, by=actor(request, by))
    return Done(study_uid=study_uid, detail=f"removed label {name!r}")


@router.get("/quarantine", response_model=list[QuarantinedOut], dependencies=[require("viewer")])
def quarantine(request: Request) -> Any:
    """Expired studies waiting in quarantine (restorable until purged)."""
    return [QuarantinedOut.model_validate(q) for q in service_of(request).quarantined()]


@router.post("/quarantine/{study_uid}/restore", response_model=Done, dependencies=[require("approver")])
def restore_from_quarantine(request: Request, study_uid: str = UidPath, by: str | None = ByQuery) -> Done:
    """Bring an expired study back from quarantine (404: unknown or purged; 400: not quarantined)."""
    service_of(request).restore(study_uid, actor(request, by))
    return Done(study_uid=study_uid, detail="restored from quarantine")


@router.get("/purge", response_model=list[QuarantinedOut], dependencies=[require("viewer")])
def purge_due(request: Request) -> Any:
    """The studies whose quarantine has ended: what POST /api/purge would delete (holds still veto)."""
    return [QuarantinedOut.model_validate(q) for q in service_of(request).purge_due()]


@router.post("/purge", response_model=PurgeOut, dependencies=[require("approver")])
def purge(request: Request, by: str | None = ByQuery) -> Any:
    """Permanently delete the studies whose quarantine has ended; a tombstone stays in the catalog."""
    return PurgeOut.model_validate(service_of(request).purge(actor(request, by)))
