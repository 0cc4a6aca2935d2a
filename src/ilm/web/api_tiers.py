"""REST API: capacity watermarks and access-based tiering (``ilm watermark``, ``ilm tiering show|run``).

    GET  /api/watermarks?tier=              each tier with a high watermark, measured now         viewer
    GET  /api/watermarks/preview?tier=&policy_path=   what a run would shed (nothing stored)     viewer
    POST /api/watermarks/run                {"tier", "policy_path", "plan_only", "by"}            approver
    GET  /api/tiering                       cooling days, retrieval policy, prefetch per tier     viewer
    GET  /api/tiering/preview?as_of=        the cooling moves a run would make (nothing stored)   viewer
    POST /api/tiering/plans                 {"as_of", "by"} -> 201: the cooling moves as a plan, to apply
                                            with POST /api/plans/{id}/apply                       operator
    GET  /api/worm                          each WORM tier: mode, copies locked and until when   viewer
"""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ilm.web.api_common import ERRORS, ApiRoute, Row, UtcDateTime, actor, service_of
from ilm.web.api_plans import PlanOut
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["tiers"], route_class=ApiRoute, responses=ERRORS)


class UsageOut(Row):
    used: int
    capacity: int | None
    measured: str = Field(description="file system or catalog")


class LimitsOut(Row):
    high: int
    low: int
    reserve: int
    high_text: str
    low_text: str


class WatermarkOut(Row):
    tier: str
    next_tier: str | None
    usage: UsageOut | None
    limits: LimitsOut | None
    error: str
    triggered: bool


class ReportOut(Row):
    plan_id: str
    done: int
    skipped: list[tuple[str, str]]
    failed: list[tuple[str, str]]
    bytes_moved: int
    stopped: str


class WatermarkPlanOut(BaseModel):
    status: WatermarkOut
    plan: PlanOut | None = None
    actions: list[dict[str, Any]] = []
    report: ReportOut | None = None


class WatermarkRun(BaseModel):
    tier: str | None = Field(default=None, max_length=64, description="Only this tier (default: every tier with a high_watermark).")
    policy_path: str | None = Field(default=None, max_length=1024,
                                    description="A policy inside ILM_HOME whose keep rules pin studies "
                                                "(default: lifecycle.schedule_policy).")
    plan_only: bool = Field(default=False, description="Store the plans for approval; move nothing.")
    by: str | None = Field(default=None, max_length=128)


class TieringPlan(BaseModel):
    as_of: date | None = None
    by: str | None = Field(default=None, max_length=128)


def _wp(wp: Any, report: Any = None) -> WatermarkPlanOut:
    return WatermarkPlanOut(status=WatermarkOut.model_validate(wp.status),
                            plan=PlanOut.model_validate(wp.plan) if wp.plan is not None else None,
                            actions=[{k: a.get(k) for k in ("study_uid", "decision", "target_tier", "size_bytes", "reason")}
                                     for a in wp.actions],
                            report=ReportOut.model_validate(report) if report is not None else None)


@router.get("/watermarks", response_model=list[WatermarkOut], dependencies=[require("viewer")])
def watermarks(request: Request, tier: str | None = Query(None, max_length=64)) -> Any:
    """Each tier with a high watermark (or the one named): used, capacity, limits, triggered."""
    return [WatermarkOut.model_validate(w) for w in service_of(request).watermarks(tier=tier)]


@router.get("/watermarks/preview", response_model=list[WatermarkPlanOut], dependencies=[require("viewer")])
def watermark_preview(request: Request, tier: str | None = Query(None, max_length=64),
                      policy_path: str | None = Query(None, max_length=1024)) -> Any:
    """What a watermark run would move now; nothing is stored or moved."""
    service = service_of(request)
    policy = service.policy_file(policy_path) if policy_path else None
    return [_wp(wp) for wp in service.watermark_plan(by=actor(request), tier=tier, policy=policy, store=False)]


@router.post("/watermarks/run", response_model=list[WatermarkPlanOut], dependencies=[require("approver")])
def watermark_run(request: Request, body: WatermarkRun | None = None) -> Any:
    """Every tier past its high watermark moves its least recently read studies down a tier until
    under its low one (plan_only: store the plans for approval instead)."""
    body = body or WatermarkRun()
    service = service_of(request)
    policy = service.policy_file(body.policy_path) if body.policy_path else None
    who = actor(request, body.by)
    if body.plan_only:
        return [_wp(wp) for wp in service.watermark_plan(by=who, tier=body.tier, policy=policy, store=True)]
    return [_wp(wp, report) for wp, report in service.watermark_run(by=who, tier=body.tier, policy=policy)]


@router.get("/tiering", response_model=dict[str, Any], dependencies=[require("viewer")])
def tiering(request: Request) -> Any:
    """Each tier's cooling days (and the tier it moves to), retrieval policy, prefetch; the promotion cap."""
    return service_of(request).tiering_settings()


@router.get("/tiering/preview", response_model=PlanOut, dependencies=[require("viewer")])
def tiering_preview(request: Request, as_of: date | None = Query(None)) -> Any:
    """The cooling moves a tiering run would make (a plan that is not stored)."""
    result = service_of(request).tiering_plan(as_of=as_of or date.today(), by=actor(request), store=False)
    return PlanOut.model_validate(result.plan)


@router.post("/tiering/plans", status_code=201, response_model=PlanOut, dependencies=[require("operator")])
def tiering_plan(request: Request, body: TieringPlan | None = None) -> Any:
    """Store the cooling moves as a plan (rule cooling:TIER); apply it with POST /api/plans/{id}/apply."""
    body = body or TieringPlan()
    result = service_of(request).tiering_plan(as_of=body.as_of or date.today(), by=actor(request, body.by))
    return PlanOut.model_validate(result.plan)


class WormOut(Row):
    tier: str
    worm: str = Field(description="governance or compliance")
    retain_days: int
    locked: int = Field(description="Copies under a lock now.")
    locked_bytes: int
    locked_until: UtcDateTime | None = Field(description="The latest lock's end.")
    retained: int = Field(description="Copies moves kept only until their lock ends.")
    retained_bytes: int
    next_release: UtcDateTime | None


@router.get("/worm", response_model=list[WormOut], dependencies=[require("viewer")])
def worm_status(request: Request) -> Any:
    """Each immutable (WORM) tier: its mode, the copies locked now and until when, and the copies
    moves kept only for their lock (dropped by the next apply or purge after their date)."""
    return [WormOut.model_validate(w) for w in service_of(request).worm_status()]
