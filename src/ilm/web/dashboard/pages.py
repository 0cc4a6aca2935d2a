"""The dashboard's pages: server-rendered HTML over the service layer, no JavaScript.

Overview, study search and one study, plans (list, preview, approve and apply
with confirmation, live progress by page refresh), holds, restores, the audit
log and the cost comparison. Every page declares its role (``page_require``);
every form that changes something carries a CSRF token. The pages call the
same ``ArchiveService`` methods as the CLI and the REST API.
"""

from __future__ import annotations

from datetime import date
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from ilm.errors import IlmError, NotFound
from ilm.models import StudyFilter
from ilm.security.roles import Principal
from ilm.service import ArchiveService
from ilm.web.dashboard import charts
from ilm.web.dashboard.session import (
    COOKIE,
    check_csrf,
    csrf_token,
    page_require,
    role_of,
    safe_next,
    visitor,
)

__all__ = ["router", "static_dir"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(files("ilm.web.dashboard").joinpath("templates")))

NAV = [("/", "Overview"), ("/studies", "Studies"), ("/plans", "Plans"), ("/holds", "Holds"),
       ("/restores", "Restores"), ("/audit", "Audit"), ("/cost", "Cost")]
PAGE = 100


def human(n: float | int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"


def money(v: Any) -> str:
    if v is None or v == "":
        return ""
    x = float(v)
    return f"${x:,.4f}" if abs(x) < 1 else f"${x:,.2f}"


templates.env.globals.update(size=human, money=money)


def _service(request: Request) -> ArchiveService:
    service: ArchiveService = request.app.state.service
    return service


def _render(request: Request, name: str, who: Principal | None, title: str, active: str, **ctx: Any) -> HTMLResponse:
    flash = request.query_params.get("flash", "")
    kind = request.query_params.get("kind", "ok")
    base = {"title": title, "nav": NAV, "active": active, "who": who, "auth": getattr(request.app.state, "auth", True),
            "csrf": csrf_token(request, who) if who else "", "flash": flash, "flash_kind": kind, "refresh": 0}
    base.update(ctx)
    return templates.TemplateResponse(request, name, base)


def _back(url: str, message: str, kind: str = "ok") -> RedirectResponse:
    sep = "&" if "?" in url else "?"
    return RedirectResponse(f"{url}{sep}{urlencode({'flash': message, 'kind': kind})}", status_code=303)


# -- login ------------------------------------------------------------------------------------

@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/") -> HTMLResponse:
    """Public: the form that takes an API token."""
    return _render(request, "login.html", None, "Sign in", "", next=safe_next(next))


@router.post("/login")
async def login(request: Request, token: str = Form(...), next: str = Form("/")) -> Response:
    """Public: check the token, keep it in an HttpOnly, SameSite=Strict cookie."""
    from ilm.errors import Unauthenticated

    try:
        who = await run_in_threadpool(_service(request).authenticate, token.strip(), sign_in=True,
                                      address=request.client.host if request.client else "")
    except Unauthenticated as exc:
        return _render(request, "login.html", None, "Sign in", "", next=safe_next(next), flash=str(exc),
                       flash_kind="error")
    resp = RedirectResponse(safe_next(next), status_code=303)
    resp.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", secure=request.url.scheme == "https",
                    max_age=12 * 3600)
    request.state.principal = who
    return resp


@router.post("/logout", dependencies=[page_require("viewer")])
async def logout(request: Request, csrf: str = Form("")) -> Response:
    who = await visitor(request)
    assert who is not None
    check_csrf(request, who, csrf)
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp


# -- overview and studies ---------------------------------------------------------------------

@router.get("/", response_class=HTMLResponse, dependencies=[page_require("viewer")])
def overview(request: Request) -> HTMLResponse:
    service = _service(request)
    who = request.state.principal
    figures = service.overview()  # kept fresh in the background: a reload does not count a million studies
    f = figures.data
    by_tier = {r.key: r for r in f["tier"]}
    tiers, total_cost = [], 0.0
    for name, t in service.settings.tiers.items():
        r = by_tier.get(name)
        size = r.size_bytes if r else 0
        cost = size / 1e9 * t.cost_per_gb_month
        total_cost += cost
        tiers.append({"name": name, "kind": t.kind + (" (archive)" if t.archive else ""),
                      "studies": r.studies if r else 0, "instances": r.instances if r else 0,
                      "size": human(size), "bytes": size, "price": money(t.cost_per_gb_month), "cost": money(cost),
                      "cost_value": cost})
    totals = {"studies": f["studies"], "size": human(f["bytes"]), "cost": money(total_cost)}
    modalities = [{"key": r.key, "studies": r.studies, "size": human(r.size_bytes)} for r in f["modality"]]
    as_of = f"figures of {figures.computed_at:%Y-%m-%d %H:%M:%S} UTC (counted in {figures.seconds:.1f} s; refreshed every minute)"
    drawn = getattr(request.app.state, "overview_charts", None)
    if drawn is None or drawn[0] != figures.computed_at:  # drawn once per set of figures, not per request
        drawn = (figures.computed_at, charts.tiers(tiers), charts.growth(f["growth"]),
                 charts.tier_history(f.get("tier_history", [])))
        request.app.state.overview_charts = drawn
    return _render(request, "overview.html", who, "Overview", "/", totals=totals, tiers=tiers,
                   modalities=modalities, tier_chart=drawn[1], growth_chart=drawn[2], history_chart=drawn[3],
                   as_of=as_of)


def _day(text: str | None, what: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a date (YYYY-MM-DD)") from None


@router.get("/studies", response_class=HTMLResponse, dependencies=[page_require("viewer")])
def studies(request: Request, patient_id: str = "", modality: str = "", date_from: str = "", date_to: str = "",
            offset: int = Query(0, ge=0)) -> HTMLResponse:
    service = _service(request)
    q = {"patient_id": patient_id, "modality": modality, "date_from": date_from, "date_to": date_to}
    error, rows = "", []
    try:
        flt = StudyFilter(patient_id=patient_id or None, modality=modality.upper() or None,
                          date_from=_day(date_from, "From"), date_to=_day(date_to, "To"), limit=PAGE + 1, offset=offset)
        found = service.studies(flt)
    except (ValueError, IlmError) as exc:
        error, found = str(exc), []
    for s in found[:PAGE]:
        rows.append({"study_instance_uid": s.study_instance_uid, "patient_id": s.patient_id, "study_date": s.study_date,
                     "modalities": s.modalities, "description": s.description, "instance_count": s.instance_count,
                     "size": human(s.size_bytes), "tiers": s.tiers,
                     "last_read": s.last_accessed_at.date().isoformat() if s.last_accessed_at else "never"})
    base = {k: v for k, v in q.items() if v}
    next_url = f"/studies?{urlencode({**base, 'offset': offset + PAGE})}" if len(found) > PAGE else ""
    prev_url = f"/studies?{urlencode({**base, 'offset': max(0, offset - PAGE)})}" if offset else ""
    return _render(request, "studies.html", request.state.principal, "Studies", "/studies", studies=rows, q=q,
                   error=error, next_url=next_url, prev_url=prev_url)


@router.get("/studies/{study_uid}", response_class=HTMLResponse, dependencies=[page_require("viewer")])
def study(request: Request, study_uid: str) -> HTMLResponse:
    service = _service(request)
    who = request.state.principal
    s = service.study(study_uid)
    if s is None:
        raise HTTPException(404, f"no study {study_uid}")
    holds = [h for h in service.holds() if h.target in (study_uid, s.summary.patient_id)]
    archive = {n for n, t in service.settings.tiers.items() if t.archive}
    on_archive = bool(set(s.summary.tiers) & archive)
    entries = service.audit(study_uid=study_uid, limit=200, newest_first=True)
    return _render(request, "study.html", who, f"Study {study_uid}", "/studies", s=s, holds=holds, entries=entries,
                   on_archive=on_archive, can_restore=role_of(who, "approver"))


# -- plans ------------------------------------------------------------------------------------

def _policy_files(service: ArchiveService) -> list[str]:
    """Policy files an operator may plan from the dashboard: *.yaml in ILM_HOME and ILM_HOME/policies."""
    home = service.settings.home
    found = sorted(home.glob("*.yaml")) + sorted((home / "policies").glob("*.yaml"))
    return [p.relative_to(home).as_posix() for p in found if p.is_file()]


@router.get("/plans", response_class=HTMLResponse, dependencies=[page_require("viewer")])
def plans(request: Request) -> HTMLResponse:
    service = _service(request)
    who = request.state.principal
    return _render(request, "plans.html", who, "Plans", "/plans", plans=service.plans(limit=200),
                   policies=_policy_files(service), can_plan=role_of(who, "operator"),
                   today=date.today().isoformat(), home=service.settings.home)


@router.post("/plans", dependencies=[page_require("operator")])
def make_plan(request: Request, policy: str = Form(...), as_of: str = Form(""), csrf: str = Form("")) -> Response:
    service = _service(request)
    who = request.state.principal
    check_csrf(request, who, csrf)
    if policy not in _policy_files(service):
        return _back("/plans", f"{policy!r} is not a policy file in {service.settings.home}", "error")
    try:
        day = _day(as_of, "As of") or date.today()
        result = service.plan(service.settings.home / policy, as_of=day, by=who.name)
    except (ValueError, IlmError) as exc:
        return _back("/plans", f"{policy}: {exc}", "error")
    return _back(f"/plans/{result.plan.id}", f"plan {result.plan.id} made from {policy}; review it before applying")


@router.get("/plans/{plan_id}", response_class=HTMLResponse, dependencies=[page_require("viewer")])
def plan(request: Request, plan_id: str, offset: int = Query(0, ge=0)) -> HTMLResponse:
    service = _service(request)
    who = request.state.principal
    p = service.plan_get(plan_id)
    if p is None:
        raise HTTPException(404, f"no plan {plan_id}")
    actions = service.plan_actions(plan_id)
    pending = sum(1 for a in actions if a.state in ("pending", "failed"))
    job = service.apply_progress(plan_id)
    entries = service.audit(plan_id=plan_id, limit=200, newest_first=True)
    page = actions[offset:offset + PAGE]
    next_url = f"/plans/{plan_id}?offset={offset + PAGE}" if offset + PAGE < len(actions) else ""
    prev_url = f"/plans/{plan_id}?offset={max(0, offset - PAGE)}" if offset else ""
    return _render(request, "plan.html", who, f"Plan {plan_id}", "/plans", p=p, actions=page,
                   total_actions=len(actions), pending=pending, job=job, entries=entries,
                   can_apply=role_of(who, "approver"), quarantine_days=service.settings.lifecycle.quarantine_days,
                   chart=charts.plan(p.summary), next_url=next_url, prev_url=prev_url,
                   refresh=2 if job is not None and job.running else 0)


@router.post("/plans/{plan_id}/apply", dependencies=[page_require("approver")])
def apply(request: Request, plan_id: str, confirm: str = Form(""), csrf: str = Form("")) -> Response:
    service = _service(request)
    who = request.state.principal
    check_csrf(request, who, csrf)
    if confirm.strip() != plan_id:
        return _back(f"/plans/{plan_id}", "not applied: type the plan id to confirm", "error")
    try:
        service.apply_start(plan_id, approved_by=who.name)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except IlmError as exc:
        return _back(f"/plans/{plan_id}", str(exc), "error")
    return _back(f"/plans/{plan_id}", f"applying {plan_id}, approved by {who.name}")


# -- holds, restores, audit -------------------------------------------------------------------

@router.get("/holds", response_class=HTMLResponse, dependencies=[page_require("viewer")])
def holds(request: Request, all: int = 0) -> HTMLResponse:
    service = _service(request)
    who = request.state.principal
    return _render(request, "holds.html", who, "Legal holds", "/holds", holds=service.holds(active_only=not all),
                   can_hold=role_of(who, "operator"))


@router.post("/holds", dependencies=[page_require("operator")])
def add_hold(request: Request, scope: str = Form(...), target: str = Form(...), reason: str = Form(...),
             csrf: str = Form("")) -> Response:
    service = _service(request)
    who = request.state.principal
    check_csrf(request, who, csrf)
    try:
        hold_id = service.hold_add(scope, target.strip(), reason.strip(), who.name)
    except IlmError as exc:
        return _back("/holds", str(exc), "error")
    return _back("/holds", f"hold {hold_id} placed on {scope} {target.strip()}")


@router.post("/holds/{hold_id}/release", dependencies=[page_require("operator")])
def release_hold(request: Request, hold_id: int, csrf: str = Form("")) -> Response:
    service = _service(request)
    who = request.state.principal
    check_csrf(request, who, csrf)
    try:
        service.hold_remove(hold_id, who.name)
    except IlmError as exc:
        return _back("/holds", str(exc), "error")
    return _back("/holds", f"hold {hold_id} released")


@router.get("/restores", response_class=HTMLResponse, dependencies=[page_require("viewer")])
def restores(request: Request, all: int = 0) -> HTMLResponse:
    service = _service(request)
    who = request.state.principal
    active = service.restores(active_only=not all)
    running = any(r.state in ("requested", "restoring") for r in active)
    return _render(request, "restores.html", who, "Restores", "/restores", restores=active,
                   can_restore=role_of(who, "approver"), refresh=5 if running else 0)


@router.post("/restores", dependencies=[page_require("approver")])
def recall(request: Request, study_uid: str = Form(...), csrf: str = Form("")) -> Response:
    service = _service(request)
    who = request.state.principal
    check_csrf(request, who, csrf)
    try:
        [status] = service.recall([study_uid.strip()], by=who.name)
    except IlmError as exc:
        return _back("/restores", str(exc), "error")
    return _back("/restores", f"{status.study_uid}: {status.state}")


@router.get("/audit", response_class=HTMLResponse, dependencies=[page_require("viewer")])
def audit(request: Request) -> HTMLResponse:
    service = _service(request)
    total = service.audit_count()
    breaks = service.audit_verify()
    chain = (f"hash chain intact: {total:,} entries" if not breaks else
             f"hash chain BROKEN at {len(breaks)} place(s): " + "; ".join(b.problem for b in breaks[:5]))
    return _render(request, "audit.html", request.state.principal, "Audit log", "/audit",
                   entries=service.audit(limit=300, newest_first=True), total=total, chain=chain, intact=not breaks)


# -- cost -------------------------------------------------------------------------------------

@router.get("/cost", response_class=HTMLResponse, dependencies=[page_require("viewer")])
def cost(request: Request, years: int = Query(5, ge=1, le=30), policy: list[str] = Query([])) -> HTMLResponse:
    service = _service(request)
    files_ = _policy_files(service)
    chosen = [p for p in policy if p in files_]
    error, chart = "", ""
    scenarios: list[dict[str, Any]] = []
    labels: list[str] = []
    try:
        from ilm.analytics import CostOptions

        report = service.cost([service.settings.home / p for p in chosen], options=CostOptions(years=years))
        labels, scenarios = charts.scenario_rows(report)
        chart = charts.cost(report)
    except IlmError as exc:
        error = str(exc)
    return _render(request, "cost.html", request.state.principal, "Cost comparison", "/cost", years=years,
                   policies=files_, chosen=chosen, scenarios=scenarios, year_labels=labels, chart=chart, error=error)


def static_dir() -> Path:
    return Path(str(files("ilm.web.dashboard").joinpath("static")))
