"""Applying a stored plan: exactly its actions, each re-checked first.

Before acting on a study, apply reloads its facts and skips it, with the
reason, when the plan no longer holds: it is no longer active, new instances
arrived, it was read since, a hold was added, or the policy, evaluated again
on today's facts for the plan's date, decides otherwise. A plan whose policy
file changed since planning is refused whole. Moves run through the journaled
safe move; expiries go to quarantine. Every action is audited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.facts import load_policy_inputs
from ilm.catalog.plans import ActionRow, get_plan, plan_action_rows, set_action_state, set_plan_state
from ilm.config import Settings
from ilm.errors import IlmError, NotFound
from ilm.lifecycle.limits import MaintenanceWindow, RateLimiter, parse_window
from ilm.lifecycle.move import recover_moves, move_study
from ilm.lifecycle.plan import PolicySource, fingerprint
from ilm.lifecycle.retention import expire_study
from ilm.lifecycle import tiering, worm
from ilm.policy import Action, evaluate
from ilm.storage import Tier

__all__ = ["ApplyReport", "apply_plan", "PlanChanged"]


class PlanChanged(IlmError):
    """The plan can no longer be applied as previewed."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ApplyReport:
    plan_id: str
    done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes_moved: int = 0
    recovered: int = 0
    released: int = 0  # WORM copies kept by earlier moves, dropped now that their lock ended
    stopped: str = ""  # why apply stopped early (maintenance window)
    pending: int = 0


def _recheck(catalog: Catalog, source: PolicySource, a: ActionRow, as_of: object,
             settings: Settings | None = None) -> str | None:
    """Why the planned action no longer holds, or None when it still does."""
    with catalog.read() as conn:
        inputs = load_policy_inputs(conn, [a.study_uid])
    if not inputs.studies:
        return "the study is no longer active (expired, purged or restored elsewhere)"
    s = inputs.studies[0]
    if s.instance_count != a.instance_count:
        return f"new instances arrived ({a.instance_count} -> {s.instance_count})"
    if s.holds or (inputs.patients.get(s.patient_key) and inputs.patients[s.patient_key].holds):
        return "a legal hold was added"
    if fingerprint(s) != a.fingerprint:
        return "the study changed since the plan (read, moved or resized)"
    d = evaluate(source.policy, s, inputs.patients.get(s.patient_key), as_of)  # type: ignore[arg-type]
    locked = [v.reason for v in d.vetoes if v.protection == "worm_lock"]
    if a.decision == "expire" and locked:  # a copy on a WORM tier was locked since the plan
        return locked[0]
    if tiering.is_cooling_rule(a.rule_id) and settings is not None:  # access-based tiering (ilm.lifecycle.tiering)
        return tiering.recheck(catalog, settings, s, d, a.rule_id or "", a.target_tier, as_of)  # type: ignore[arg-type]
    if d.action.value != a.decision or (d.action is Action.TRANSITION and d.tier != a.target_tier):
        return f"the policy now decides otherwise: {d.reason}"
    return None


def apply_plan(
    catalog: Catalog,
    settings: Settings,
    tiers: Callable[[str], Tier],
    plan_id: str,
    source: PolicySource,
    *,
    approved_by: str,
    clock: Callable[[], datetime] = _now,
    progress: Callable[[ActionRow, str], None] | None = None,
) -> ApplyReport:
    """Execute the pending (and previously failed) actions of a plan."""
    with catalog.read() as conn:
        plan = get_plan(conn, plan_id)
    if plan is None:
        raise NotFound(f"no plan {plan_id!r}")
    if source.sha256 != plan.policy_sha256:
        raise PlanChanged(
            f"plan {plan_id}: the policy file {source.path} changed since the plan was made "
            f"(sha256 {plan.policy_sha256[:12]}... then, {source.sha256[:12]}... now); make a new plan"
        )
    report = ApplyReport(plan_id)
    report.recovered = (lambda r: r.rolled_back + r.finished)(recover_moves(catalog, tiers))
    report.released = worm.drop_released(catalog, tiers, clock()).dropped
    lc = settings.lifecycle
    window: MaintenanceWindow | None = parse_window(lc.maintenance_window) if lc.maintenance_window else None
    limiter = RateLimiter(lc.max_mb_per_s)
    quarantine = timedelta(days=lc.quarantine_days)
    with catalog.write() as conn:
        set_plan_state(conn, plan_id, "applying", approved_by)
        append_audit(conn, at=_now(), actor=approved_by, action="plan.apply", plan_id=plan_id,
                     detail={"plan_sha256": plan.plan_sha256})
    with catalog.read() as conn:
        todo = list(plan_action_rows(conn, plan_id, ("pending", "failed")))
    for i, a in enumerate(todo):
        if window is not None and not window.contains(clock().astimezone()):
            report.stopped = f"outside the maintenance window {window}; run 'ilm apply {plan_id} --resume' later"
            report.pending = len(todo) - i
            break
        why = _recheck(catalog, source, a, plan.as_of, settings)
        if why is not None:
            _record(catalog, plan_id, a, "skipped", why, approved_by)
            report.skipped.append((a.study_uid, why))
        elif a.decision == "transition":
            assert a.target_tier
            r = move_study(catalog, tiers, a.study_uid, a.target_tier, plan_id=plan_id,
                           workers=lc.move_workers, limiter=limiter)
            report.bytes_moved += r.bytes_moved
            mirrored = worm.mirror_holds(catalog, settings, tiers, [a.study_uid], only_held=True) if r.moved else None
            if mirrored is not None and mirrored.problems:  # a held study now on a WORM tier: its S3 legal hold
                r.failed.append(f"moved, but the legal hold is not set on {len(mirrored.problems)} objects: "
                                f"{mirrored.problems[0]} (run 'ilm hold sync')")
            if r.ok:
                kept = f"; {r.retained} source copies kept until their WORM lock ends" if r.retained else ""
                _record(catalog, plan_id, a, "done", f"moved {r.moved} instances to {a.target_tier}{kept}", approved_by)
                report.done += 1
            else:
                _record(catalog, plan_id, a, "failed", "; ".join(r.failed)[:1000], approved_by)
                report.failed.append((a.study_uid, r.failed[0]))
        elif a.decision == "expire":
            if expire_study(catalog, a.study_uid, quarantine=quarantine, by=approved_by, rule=a.rule_id, plan=plan_id):
                _record(catalog, plan_id, a, "done", f"quarantined for {lc.quarantine_days} days", approved_by)
                report.done += 1
            else:
                why = "not expired: the study is held or no longer active"
                _record(catalog, plan_id, a, "skipped", why, approved_by)
                report.skipped.append((a.study_uid, why))
        if progress:
            progress(a, "done")
    if not report.stopped:
        with catalog.write() as conn:
            set_plan_state(conn, plan_id, "failed" if report.failed else "applied")
    return report


def _record(catalog: Catalog, plan_id: str, a: ActionRow, state: str, reason: str, actor: str) -> None:
    now = _now()
    with catalog.write() as conn:
        set_action_state(conn, plan_id, a.study_uid, state, reason, now)
        append_audit(conn, at=now, actor=actor, action=f"action.{state}", study_uid=a.study_uid, plan_id=plan_id,
                     rule_id=a.rule_id, detail={"decision": a.decision, "tier": a.target_tier, "reason": reason})
