"""Capacity watermarks: measure each tier, plan what goes down, apply it through the safe move.

A watermark run is a plan like a policy's (``plans`` and ``plan_actions``,
``policy_name`` ``watermark:TIER``, every action's rule ``watermark:TIER``),
so it is previewed (``ilm watermark --dry-run``), stored, applied, audited
and resumed (``ilm apply PLAN --resume``) like any plan. The decision itself
is pure (:mod:`ilm.lifecycle.watermark_plan`); this module measures, lists
candidates, stores and applies.

Moves go to the next tier in the configured order through ``move_study``
(copy, verify, commit, delete; journaled); drops of copies verified
elsewhere go through the same journal (``pack_move.drop_study_copies``).
The maintenance window does not hold a watermark run back (a tier past its
high watermark cannot wait for the night); the byte-rate limit applies.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.facts import load_policy_inputs
from ilm.catalog.plans import (
    ActionRow,
    PlanRow,
    get_plan,
    insert_plan,
    plan_action_rows,
    set_action_state,
    set_plan_state,
    tier_bytes,
)
from ilm.catalog.watermarks import (
    copies_only_here,
    study_on_tier,
    study_state,
    tier_studies_lru,
)
from ilm.config import FilesystemTierSettings, Settings
from ilm.cost import monthly_storage_cost
from ilm.errors import ConfigError, IlmError, NotFound
from ilm.lifecycle.apply import ApplyReport, PlanChanged
from ilm.lifecycle.limits import RateLimiter, parse_window
from ilm.lifecycle.move import move_study, recover_moves
from ilm.lifecycle.pack_move import drop_study_copies
from ilm.lifecycle.plan import PolicySource, tier_prices
from ilm.lifecycle.watermark_plan import (
    Candidate,
    Kind,
    Limits,
    Selection,
    Usage,
    WatermarkError,
    limits,
    reserve_bytes,
    select,
)
from ilm.policy import Action, evaluate
from ilm.storage import Tier

__all__ = [
    "PREFIX",
    "TierWatermark",
    "WatermarkPlan",
    "apply_watermark_plan",
    "is_watermark_plan",
    "plan_watermarks",
    "rule_id",
    "watermark_status",
]

PREFIX = "watermark:"


def rule_id(tier: str) -> str:
    return f"{PREFIX}{tier}"


def is_watermark_plan(plan: PlanRow) -> bool:
    return plan.policy_name.startswith(PREFIX)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class TierWatermark:
    """One tier's watermarks, measured now."""

    tier: str
    next_tier: str | None
    usage: Usage | None = None
    limits: Limits | None = None
    error: str = ""

    @property
    def triggered(self) -> bool:
        return self.usage is not None and self.limits is not None and \
            self.usage.used + self.limits.reserve > self.limits.high


def _next_tier(settings: Settings, name: str) -> str | None:
    names = settings.lifecycle_tiers  # never a replica tier (ilm.fixity.replicas)
    if name not in names:
        return None
    i = names.index(name)
    return names[i + 1] if i + 1 < len(names) else None


def _measure(settings: Settings, tiers: Callable[[str], Tier], catalog_bytes: dict[str, int], name: str,
             now: datetime) -> TierWatermark:
    t = settings.tiers[name]
    out = TierWatermark(name, _next_tier(settings, name))
    assert t.high_watermark is not None
    try:
        if any(w and w.strip().endswith("%") for w in (t.high_watermark, t.low_watermark)):
            if not isinstance(t, FilesystemTierSettings):
                raise WatermarkError(f"tier {name!r} is not on a file system: a percentage watermark needs one "
                                     f"(use a size such as '500GB')")
            tiers(name)  # opening creates the folder
            du = shutil.disk_usage(settings.resolve(t.path))
            usage = Usage(du.used, du.used + du.free, "file system")
        else:
            usage = Usage(catalog_bytes.get(name, 0), None, "catalog")
        lc = settings.lifecycle
        night = parse_window(lc.maintenance_window) if lc.maintenance_window else None
        reserve = reserve_bytes(t.expected_daily_gb, now.astimezone(), night)
        out.usage = usage
        out.limits = limits(t.high_watermark, t.low_watermark, usage, reserve)
    except (WatermarkError, OSError, IlmError) as exc:
        out.error = f"tier {name!r}: {exc}"
    return out


def _tiers_with_watermarks(settings: Settings, only: str | None) -> list[str]:
    if only is not None:
        if only not in settings.tiers:
            raise ConfigError(f"no tier named {only!r} (tiers: {', '.join(settings.tiers)})")
        if settings.tiers[only].high_watermark is None:
            raise ConfigError(f"tier {only!r} has no high_watermark in the configuration")
        return [only]
    return [n for n, t in settings.tiers.items() if t.high_watermark is not None]


def watermark_status(catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier], *,
                     tier: str | None = None, now: datetime | None = None) -> list[TierWatermark]:
    """Every tier with watermarks (or the one named), measured now."""
    now = now or _now()
    names = _tiers_with_watermarks(settings, tier)
    with catalog.read() as conn:
        held = tier_bytes(conn)
    return [_measure(settings, tiers, held, n, now) for n in names]


# -- planning -------------------------------------------------------------------------------


def _fingerprint(instance_count: int, size: int, last_accessed: datetime | None) -> str:
    body = json.dumps([instance_count, size, last_accessed.isoformat() if last_accessed else ""])
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def _pin(conn: Any, policy: PolicySource | None, uid: str, as_of: Any) -> str:
    """Why the policy keeps the study where it is ('' when it does not).

    ``conn`` is a catalog connection (typed Any: only ilm.catalog imports SQLAlchemy)."""
    if policy is None:
        return ""
    inputs = load_policy_inputs(conn, [uid])
    if not inputs.studies:
        return "not active"
    s = inputs.studies[0]
    d = evaluate(policy.policy, s, inputs.patients.get(s.patient_key), as_of)
    if d.proposed is Action.KEEP and d.rule_id is not None:
        if d.unknown:
            return f"rule {d.rule_id!r} (keep) may apply: {', '.join(d.unknown)} unknown"
        return f"kept by rule {d.rule_id!r}"
    return ""


def _candidates(conn: Any, name: str, next_tier: str | None, policy: PolicySource | None,
                as_of: Any) -> Iterator[Candidate]:
    for ts in tier_studies_lru(conn, name):
        if ts.tiers == (name,):
            size, n, kind = ts.size_bytes, ts.instance_count, Kind.MOVE
        else:
            size, n = study_on_tier(conn, ts.study_uid, name)
            kind = Kind.DROP if copies_only_here(conn, ts.study_uid, name) == 0 else Kind.MOVE
        if size == 0:
            continue
        pinned = ""
        if kind is Kind.MOVE and next_tier is None:
            pinned = f"no tier below {name!r} to move it to"
        if not pinned:
            pinned = _pin(conn, policy, ts.study_uid, as_of)
        yield Candidate(ts.study_uid, size, ts.last_read, kind, n, pinned)


@dataclass
class WatermarkPlan:
    status: TierWatermark
    selection: Selection | None = None
    plan: PlanRow | None = None
    actions: list[dict[str, Any]] = field(default_factory=list)


def plan_watermarks(
    catalog: Catalog,
    settings: Settings,
    tiers: Callable[[str], Tier],
    *,
    by: str,
    tier: str | None = None,
    policy: PolicySource | None = None,
    store: bool = True,
    now: datetime | None = None,
) -> list[WatermarkPlan]:
    """One plan per tier past its high watermark (stored unless ``store`` is False).

    Tiers under their high watermark, or whose watermarks cannot be measured,
    get a result without a plan (``status`` says which and why).
    """
    now = now or _now()
    as_of = now.astimezone().date()
    out = []
    for st in watermark_status(catalog, settings, tiers, tier=tier, now=now):
        wp = WatermarkPlan(st)
        out.append(wp)
        if not st.triggered:
            continue
        assert st.usage is not None and st.limits is not None
        with catalog.read() as conn:
            sel = select(st.tier, st.usage, st.limits, _candidates(conn, st.tier, st.next_tier, policy, as_of))
            before = tier_bytes(conn)
            fps = {}
            for c in sel.chosen:
                s = study_state(conn, c.study_uid)
                assert s is not None
                fps[c.study_uid] = _fingerprint(s.instance_count, s.size_bytes, s.last_accessed_at)
        wp.selection = sel
        wp.actions, summary = _actions_and_summary(settings, st, sel, before, fps)
        plan = _plan_row(now, by, st, sel, policy, summary, wp.actions)
        wp.plan = plan
        if store:
            with catalog.write() as conn:
                insert_plan(conn, plan, wp.actions)
                append_audit(conn, at=now, actor=by, action="plan.create", plan_id=plan.id, rule_id=rule_id(st.tier),
                             detail={"watermark": summary["watermark"], "plan_sha256": plan.plan_sha256,
                                     "actions": summary["actions"]})
    return out


def _actions_and_summary(settings: Settings, st: TierWatermark, sel: Selection, before: dict[str, int],
                         fps: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rid = rule_id(st.tier)
    actions: list[dict[str, Any]] = []
    after = dict(before)
    per: dict[tuple[str, str], dict[str, int]] = {}
    for c in sel.chosen:
        target = st.next_tier if c.kind is Kind.MOVE else None
        actions.append(dict(
            study_uid=c.study_uid, decision=c.kind.value, target_tier=target, rule_id=rid, vetoes="[]",
            fingerprint=fps[c.study_uid], instance_count=c.instances, size_bytes=c.size, state="pending",
            reason=f"last read {c.last_read.astimezone():%Y-%m-%d %H:%M}"
                   + ("; verified on another tier: the copies here are dropped" if c.kind is Kind.DROP else ""),
        ))
        after[st.tier] = after.get(st.tier, 0) - c.size
        if target:
            after[target] = after.get(target, 0) + c.size
        row = per.setdefault((c.kind.value, target or ""), {"studies": 0, "instances": 0, "bytes": 0})
        row["studies"] += 1
        row["instances"] += c.instances
        row["bytes"] += c.size
    vetoes: dict[str, int] = {}
    for c in sel.passed_over:
        protection = "no_lower_tier" if c.pinned.startswith("no tier below") else "policy_keep_rule"
        vetoes[protection] = vetoes.get(protection, 0) + 1
        actions.append(dict(
            study_uid=c.study_uid, decision="keep", target_tier=None, rule_id=rid,
            vetoes=json.dumps([{"protection": protection, "reason": c.pinned}]), fingerprint="",
            instance_count=c.instances, size_bytes=c.size, state="kept", reason=c.pinned,
        ))
    actions.sort(key=lambda a: a["study_uid"])
    lim, usage = sel.limits, sel.usage
    prices = tier_prices(settings)
    summary = {
        "studies": len(sel.chosen) + len(sel.passed_over),
        "actions": [{"action": a, "rule": rid, "tier": t or None, **v} for (a, t), v in sorted(per.items())],
        "vetoes": dict(sorted(vetoes.items())),
        "unknown_facts": {},
        "bytes_before": {k: int(v) for k, v in sorted(before.items())},
        "bytes_after": {k: int(v) for k, v in sorted(after.items()) if v},
        "monthly_cost_before": monthly_storage_cost(before, prices),
        "monthly_cost_after": monthly_storage_cost(after, prices),
        "watermark": {
            "tier": st.tier, "next_tier": st.next_tier, "measured": usage.measured, "used": usage.used,
            "capacity": usage.capacity, "high": lim.high, "low": lim.low, "high_watermark": lim.high_text,
            "low_watermark": lim.low_text, "reserve": lim.reserve, "to_free": sel.to_free, "freed": sel.freed,
            "used_after": sel.used_after, "ends_under_low": sel.ends_under_low,
        },
    }
    return actions, summary


def _plan_row(now: datetime, by: str, st: TierWatermark, sel: Selection, policy: PolicySource | None,
              summary: dict[str, Any], actions: list[dict[str, Any]]) -> PlanRow:
    policy_sha = policy.sha256 if policy else hashlib.sha256(b"").hexdigest()
    state_hash = hashlib.sha256(json.dumps([summary["watermark"], summary["bytes_before"]], sort_keys=True).encode()).hexdigest()
    plan_hash = hashlib.sha256(json.dumps(
        [rule_id(st.tier), policy_sha, state_hash,
         [(a["study_uid"], a["decision"], a["target_tier"]) for a in actions]]).encode()).hexdigest()
    return PlanRow(
        id=f"w{now:%Y%m%d}-{secrets.token_hex(3)}", created_at=now, created_by=by, as_of=now.astimezone().date(),
        policy_name=rule_id(st.tier), policy_path=policy.path if policy else "", policy_sha256=policy_sha,
        catalog_sha256=state_hash, plan_sha256=plan_hash, state="planned", approved_by=None, summary=summary,
    )


# -- applying -------------------------------------------------------------------------------


def _recheck(catalog: Catalog, a: ActionRow, tier: str, policy: PolicySource | None, as_of: Any) -> str | None:
    with catalog.read() as conn:
        s = study_state(conn, a.study_uid)
        if s is None:
            return "the study is no longer active"
        if tier not in s.tiers and not (a.decision == Kind.MOVE.value and a.target_tier in s.tiers):
            return f"the study is no longer on {tier}"
        if _fingerprint(s.instance_count, s.size_bytes, s.last_accessed_at) != a.fingerprint:
            return "the study changed since the plan (read, or new instances)"
        if a.decision == Kind.DROP.value and copies_only_here(conn, a.study_uid, tier):
            return f"some copies on {tier} are no longer verified on another tier"
        pin = _pin(conn, policy, a.study_uid, as_of)
    return f"the policy keeps it now: {pin}" if pin else None


def apply_watermark_plan(
    catalog: Catalog,
    settings: Settings,
    tiers: Callable[[str], Tier],
    plan_id: str,
    *,
    approved_by: str,
    policy: PolicySource | None = None,
    progress: Callable[[ActionRow, str], None] | None = None,
) -> ApplyReport:
    """Execute the pending (and previously failed) actions of a watermark plan, each re-checked first."""
    with catalog.read() as conn:
        plan = get_plan(conn, plan_id)
    if plan is None:
        raise NotFound(f"no plan {plan_id!r}")
    if not is_watermark_plan(plan):
        raise IlmError(f"plan {plan_id} is not a watermark plan")
    if plan.policy_path and (policy is None or policy.sha256 != plan.policy_sha256):
        raise PlanChanged(f"plan {plan_id}: the policy file {plan.policy_path} changed since the plan was made; "
                          f"run the watermarks again")
    tier = plan.policy_name[len(PREFIX):]
    report = ApplyReport(plan_id)
    rec = recover_moves(catalog, tiers)
    report.recovered = rec.rolled_back + rec.finished
    lc = settings.lifecycle
    limiter = RateLimiter(lc.max_mb_per_s)
    with catalog.write() as conn:
        set_plan_state(conn, plan_id, "applying", approved_by)
        append_audit(conn, at=_now(), actor=approved_by, action="plan.apply", plan_id=plan_id, rule_id=plan.policy_name,
                     detail={"plan_sha256": plan.plan_sha256})
    with catalog.read() as conn:
        todo = list(plan_action_rows(conn, plan_id, ("pending", "failed")))
    for a in todo:
        why = _recheck(catalog, a, tier, policy, plan.as_of)
        if why is not None:
            _record(catalog, plan_id, a, "skipped", why, approved_by)
            report.skipped.append((a.study_uid, why))
        elif a.decision == Kind.MOVE.value:
            assert a.target_tier
            r = move_study(catalog, tiers, a.study_uid, a.target_tier, plan_id=plan_id, workers=lc.move_workers,
                           limiter=limiter)
            report.bytes_moved += r.bytes_moved
            if r.ok:
                _record(catalog, plan_id, a, "done", f"moved {r.moved} instances to {a.target_tier}", approved_by)
                report.done += 1
            else:
                _record(catalog, plan_id, a, "failed", "; ".join(r.failed)[:1000], approved_by)
                report.failed.append((a.study_uid, r.failed[0]))
        else:
            d = drop_study_copies(catalog, tiers, a.study_uid, tier, plan_id=plan_id)
            if d.ok:
                _record(catalog, plan_id, a, "done", f"dropped {d.dropped} copies on {tier} (verified elsewhere)",
                        approved_by)
                report.done += 1
            else:
                _record(catalog, plan_id, a, "failed", "; ".join(d.failed)[:1000], approved_by)
                report.failed.append((a.study_uid, d.failed[0]))
        if progress:
            progress(a, "done")
    with catalog.write() as conn:
        set_plan_state(conn, plan_id, "failed" if report.failed else "applied")
    return report


def _record(catalog: Catalog, plan_id: str, a: ActionRow, state: str, reason: str, actor: str) -> None:
    now = _now()
    with catalog.write() as conn:
        set_action_state(conn, plan_id, a.study_uid, state, reason, now)
        append_audit(conn, at=now, actor=actor, action=f"action.{state}", study_uid=a.study_uid, plan_id=plan_id,
                     rule_id=a.rule_id, detail={"decision": a.decision, "tier": a.target_tier, "reason": reason})
