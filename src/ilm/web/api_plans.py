"""REST API: policies and plans (``ilm policy check``, ``ilm plan``, ``ilm plan show|list|export``,
``ilm plan --compare``, ``ilm explain``, ``ilm apply``).

    POST /api/policies/check              {"policy": YAML}: every error with line and field       viewer
    POST /api/plans                       {"policy_path" | "policy", "as_of", "created_by"} -> 201  operator
    POST /api/plans/upload                the policy file as multipart/form-data (curl -F policy=@f) operator
    GET  /api/plans?limit=                stored plans, newest first                               viewer
    GET  /api/plans/{id}                  the plan, its per-rule and per-protection summary, progress  viewer
    GET  /api/plans/{id}/actions?state=&limit=&offset=   its decisions, a page at a time           viewer
    GET  /api/plans/{id}/export           the document of 'ilm plan export'                        viewer
    POST /api/plans/{id}/compare          a peer's exported plan -> the studies decided differently viewer
    POST /api/plans/{id}/apply            {"approved_by"} -> 202 and the apply runs in the background approver
    GET  /api/plans/{id}/progress         processed/total actions and bytes, state                 viewer
    POST /api/explain                     {"study_uid", "policy_path" | "policy", "as_of"}         operator

A policy is named by a path inside ILM_HOME (the server reads it), or sent
as text: it is then kept as ILM_HOME/policies/api/<sha256>.yaml, since an
apply re-reads the plan's policy and refuses it if it changed.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Body, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from ilm.errors import NotFound
from ilm.policy import Decision, check_policy
from ilm.service import ArchiveService
from ilm.web.api_common import ERRORS, ApiRoute, Row, UtcDateTime, actor, service_of, uid_field
from ilm.web.auth import require

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["plans"], route_class=ApiRoute, responses=ERRORS)

MAX_POLICY_BYTES = 1_000_000
PolicyText = Field(default=None, max_length=MAX_POLICY_BYTES, description="The policy itself (YAML), instead of policy_path.")
PolicyPath = Field(default=None, max_length=1024, description="A policy file inside ILM_HOME (relative to it, or absolute).")


class PolicyRef(BaseModel):
    policy_path: str | None = PolicyPath
    policy: str | None = PolicyText

    @model_validator(mode="after")
    def _one(self) -> "PolicyRef":
        if (self.policy_path is None) == (self.policy is None):
            raise ValueError("give exactly one of policy_path (a file inside ILM_HOME) or policy (the YAML itself)")
        return self

    def resolve(self, service: ArchiveService) -> Path:
        return service.keep_policy(self.policy) if self.policy is not None else service.policy_file(self.policy_path or "")


class PlanCreate(PolicyRef):
    as_of: date | None = Field(default=None, description="Evaluate as of this day; default today.")
    created_by: str | None = Field(default=None, max_length=128, description="Who asks (the token's name is recorded too).")


class ExplainRequest(PolicyRef):
    study_uid: str = uid_field()
    as_of: date | None = None


class PolicyCheck(BaseModel):
    policy: str = Field(max_length=1_000_000, description="The policy (YAML).")


class PolicyCheckResult(BaseModel):
    ok: bool
    name: str | None = None
    rules: int = 0
    issues: list[str] = []
    warnings: list[str] = []


class RuleLine(BaseModel):
    """What one rule does to how many studies (a line of the plan's summary)."""

    model_config = ConfigDict(extra="allow")
    action: str
    rule: str | None = None
    tier: str | None = None
    studies: int = 0
    instances: int = 0
    bytes: int = 0


class PlanSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    studies: int = 0
    actions: list[RuleLine] = Field(default=[], description="Per rule: action, target tier, studies, instances, bytes.")
    vetoes: dict[str, int] = Field(default={}, description="Per protection: the studies it kept from deletion.")
    unknown_facts: dict[str, int] = Field(default={}, description="Per missing fact: the studies kept for lacking it.")
    bytes_before: dict[str, int] = {}
    bytes_after: dict[str, int] = {}
    monthly_cost_before: float = 0.0
    monthly_cost_after: float = 0.0


class PlanOut(Row):
    id: str
    created_at: UtcDateTime
    created_by: str
    as_of: date
    policy_name: str
    policy_path: str
    policy_sha256: str
    catalog_sha256: str
    plan_sha256: str
    state: str
    approved_by: str | None
    summary: PlanSummary


class ActionOut(Row):
    study_uid: str
    decision: str
    target_tier: str | None
    rule_id: str | None
    vetoes: list[dict[str, Any]]
    instance_count: int
    size_bytes: int
    state: str
    reason: str


class ActionPage(BaseModel):
    plan_id: str
    limit: int
    offset: int
    actions: list[ActionOut]


class JobOut(Row):
    """The background apply of this server process (absent when the plan was applied elsewhere)."""

    state: str
    approved_by: str
    total: int
    handled: int
    done: int
    skipped: int
    failed: int
    bytes_moved: int
    error: str
    stopped: str
    started_at: UtcDateTime
    finished_at: UtcDateTime | None


class Progress(BaseModel):
    plan_id: str
    plan_state: str = Field(description="planned, applying, applied or failed")
    approved_by: str | None
    total: int = Field(description="Actions to apply (moves and expiries).")
    processed: int
    done: int
    skipped: int
    failed: int
    bytes_total: int = Field(description="Bytes of the moves to apply.")
    bytes_processed: int
    job: JobOut | None = None


class PlanDetail(BaseModel):
    plan: PlanOut
    progress: Progress


class ApplyRequest(BaseModel):
    approved_by: str | None = Field(default=None, max_length=128, description="Who approved (the token's name is recorded too).")


class Difference(BaseModel):
    study_uid: str
    here: str
    here_tier: str | None
    here_rule: str | None
    peer: str
    peer_tier: str | None
    peer_rule: str | None


@router.post("/policies/check", response_model=PolicyCheckResult, dependencies=[require("viewer")])
def policy_check(body: PolicyCheck, request: Request) -> PolicyCheckResult:
    """Validate a policy: every problem with line and field; nothing is stored."""
    settings = service_of(request).settings
    policy, issues = check_policy(body.policy, known_tiers=list(settings.tiers), source="policy")
    return PolicyCheckResult(ok=policy is not None, name=policy.name if policy else None,
                             rules=len(policy.rules) if policy else 0, issues=[str(i) for i in issues],
                             warnings=[str(w) for w in policy.warnings] if policy else [])


@router.post("/plans", status_code=201, response_model=PlanOut, dependencies=[require("operator")])
def create_plan(body: PlanCreate, request: Request) -> Any:
    """Evaluate a policy over every study and store the plan (ilm plan --policy FILE)."""
    service = service_of(request)
    result = service.plan(body.resolve(service), as_of=body.as_of or date.today(), by=actor(request, body.created_by))
    return PlanOut.model_validate(result.plan)


@router.post("/plans/upload", status_code=201, response_model=PlanOut, dependencies=[require("operator")])
async def upload_plan(request: Request,
                      policy: UploadFile = File(description="The policy file (YAML), e.g. curl -F policy=@site.yaml"),
                      as_of: date | None = Form(default=None), created_by: str | None = Form(default=None, max_length=128),
                      ) -> Any:
    """Make a plan from a policy file sent as multipart/form-data (the same as POST /api/plans with ``policy``)."""
    data = await policy.read(MAX_POLICY_BYTES + 1)
    if len(data) > MAX_POLICY_BYTES:
        raise ValueError(f"policy file {policy.filename!r} is over {MAX_POLICY_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"policy file {policy.filename!r} is not UTF-8 text") from None
    body = PlanCreate(policy=text, as_of=as_of, created_by=created_by)
    return await run_in_threadpool(create_plan, body, request)


@router.get("/plans", response_model=list[PlanOut], dependencies=[require("viewer")])
def list_plans(request: Request, limit: int = Query(50, ge=1, le=1000)) -> Any:
    """Stored plans, newest first."""
    return [PlanOut.model_validate(p) for p in service_of(request).plans(limit)]


def _plan(service: ArchiveService, plan_id: str) -> PlanOut:
    p = service.plan_get(plan_id)
    if p is None:
        raise NotFound(f"no plan {plan_id!r}")
    return PlanOut.model_validate(p)


@router.get("/plans/{plan_id}", response_model=PlanDetail, dependencies=[require("viewer")])
def show_plan(plan_id: str, request: Request) -> Any:
    """A plan: what each rule does, what each protection vetoed, cost before and after, and its progress."""
    service = service_of(request)
    return PlanDetail(plan=_plan(service, plan_id), progress=Progress.model_validate(service.plan_progress(plan_id),
                                                                                     from_attributes=True))


@router.get("/plans/{plan_id}/actions", response_model=ActionPage, dependencies=[require("viewer")])
def plan_actions(plan_id: str, request: Request,
                 state: list[str] | None = Query(None, description="pending, done, skipped, failed, kept"),
                 limit: int = Query(100, ge=1, le=10_000), offset: int = Query(0, ge=0, le=10**9)) -> Any:
    """The plan's decisions (study, action, tier, rule, vetoes, state), a page at a time."""
    service = service_of(request)
    _plan(service, plan_id)
    rows = service.plan_actions(plan_id, states=tuple(state) if state else None, limit=limit, offset=offset)
    return ActionPage(plan_id=plan_id, limit=limit, offset=offset, actions=[ActionOut.model_validate(a) for a in rows])


@router.get("/plans/{plan_id}/export", response_model=dict[str, Any], dependencies=[require("viewer")])
def export_plan(plan_id: str, request: Request) -> Any:
    """The plan as 'ilm plan export' writes it, to compare on a peer archive."""
    return service_of(request).plan_export(plan_id)


@router.post("/plans/{plan_id}/compare", response_model=list[Difference], dependencies=[require("viewer")])
def compare_plan(plan_id: str, request: Request,
                 peer: dict[str, Any] = Body(..., description="A plan exported by 'ilm plan export' or GET .../export.")) -> Any:
    """The studies this plan and a peer's exported plan decide differently (absent from a side: kept there)."""
    return service_of(request).plan_compare(plan_id, peer)


@router.post("/plans/{plan_id}/apply", status_code=202, response_model=Progress, dependencies=[require("approver")])
def apply_plan(plan_id: str, request: Request, body: ApplyRequest | None = None) -> Any:
    """Start applying exactly this plan (each action re-checked first); poll .../progress until
    ``job.state`` is not running. 409 when the plan is applied already or its policy changed."""
    service = service_of(request)
    service.check_policy_unchanged(plan_id)
    service.apply_start(plan_id, approved_by=actor(request, body.approved_by if body else None))
    progress = Progress.model_validate(service.plan_progress(plan_id), from_attributes=True)
    return JSONResponse(progress.model_dump(mode="json"), status_code=202,
                        headers={"Location": f"/api/plans/{plan_id}/progress"})


@router.get("/plans/{plan_id}/progress", response_model=Progress, dependencies=[require("viewer")])
def apply_progress(plan_id: str, request: Request) -> Any:
    """How far the apply is: actions and bytes processed of the total, the plan's state, the background job."""
    return Progress.model_validate(service_of(request).plan_progress(plan_id), from_attributes=True)


@router.post("/explain", response_model=Decision, dependencies=[require("operator")])
def explain(body: ExplainRequest, request: Request) -> Any:
    """Every rule's match or miss and every protection, for one study (404: no active study)."""
    service = service_of(request)
    d = service.explain(body.study_uid, body.resolve(service), as_of=body.as_of or date.today())
    if d is None:
        raise NotFound(f"no active study {body.study_uid!r}")
    return d

