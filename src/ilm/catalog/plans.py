"""Storing plans and their actions, and what apply records of them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from ilm.catalog.schema import instances, locations, plan_actions, plans, studies
from ilm.models import CopyState

__all__ = [
    "PlanRow",
    "ActionRow",
    "insert_plan",
    "plan_action_totals",
    "get_plan",
    "list_plans",
    "plan_action_rows",
    "set_action_state",
    "set_plan_state",
    "tier_bytes",
    "study_tier_bytes",
]


@dataclass(frozen=True, slots=True)
class PlanRow:
    id: str
    created_at: datetime
    created_by: str
    as_of: date
    policy_name: str
    policy_path: str
    policy_sha256: str
    catalog_sha256: str
    plan_sha256: str
    state: str
    approved_by: str | None
    summary: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ActionRow:
    study_uid: str
    decision: str
    target_tier: str | None
    rule_id: str | None
    vetoes: list[dict[str, Any]]
    fingerprint: str
    instance_count: int
    size_bytes: int
    state: str
    reason: str


def insert_plan(conn: Connection, plan: PlanRow, actions: list[dict[str, Any]]) -> None:
    conn.execute(plans.insert().values(
        id=plan.id, created_at=plan.created_at, created_by=plan.created_by, as_of=plan.as_of,
        policy_name=plan.policy_name, policy_path=plan.policy_path, policy_sha256=plan.policy_sha256,
        catalog_sha256=plan.catalog_sha256, plan_sha256=plan.plan_sha256, state=plan.state,
        approved_by=plan.approved_by, summary=json.dumps(plan.summary, sort_keys=True),
    ))
    for i in range(0, len(actions), 5000):
        conn.execute(plan_actions.insert(), [dict(a, plan_id=plan.id) for a in actions[i:i + 5000]])


def _plan(r: Any) -> PlanRow:
    return PlanRow(r.id, r.created_at, r.created_by, r.as_of, r.policy_name, r.policy_path, r.policy_sha256,
                   r.catalog_sha256, r.plan_sha256, r.state, r.approved_by, json.loads(r.summary))


def get_plan(conn: Connection, plan_id: str) -> PlanRow | None:
    r = conn.execute(select(plans).where(plans.c.id == plan_id)).first()
    return None if r is None else _plan(r)


def list_plans(conn: Connection, limit: int = 50) -> list[PlanRow]:
    return [_plan(r) for r in conn.execute(select(plans).order_by(plans.c.created_at.desc()).limit(limit))]


def plan_action_rows(conn: Connection, plan_id: str, states: tuple[str, ...] | None = None, *,
                     limit: int | None = None, offset: int = 0) -> Iterator[ActionRow]:
    q = select(plan_actions).where(plan_actions.c.plan_id == plan_id).order_by(plan_actions.c.id)
    if states:
        q = q.where(plan_actions.c.state.in_(states))
    if limit is not None or offset:
        q = q.limit(limit).offset(offset)
    for r in conn.execute(q):
        yield ActionRow(r.study_uid, r.decision, r.target_tier, r.rule_id, json.loads(r.vetoes or "[]"),
                        r.fingerprint, r.instance_count, int(r.size_bytes), r.state, r.reason)


def plan_action_totals(conn: Connection, plan_id: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(state, decision) -> (actions, bytes) of one plan: an apply's progress in one query."""
    q = (select(plan_actions.c.state, plan_actions.c.decision, func.count(),
                func.coalesce(func.sum(plan_actions.c.size_bytes), 0))
         .where(plan_actions.c.plan_id == plan_id).group_by(plan_actions.c.state, plan_actions.c.decision))
    return {(str(s), str(d)): (int(n), int(b)) for s, d, n, b in conn.execute(q)}


def set_action_state(conn: Connection, plan_id: str, study_uid: str, state: str, reason: str, now: datetime) -> None:
    conn.execute(update(plan_actions)
                 .where(plan_actions.c.plan_id == plan_id, plan_actions.c.study_uid == study_uid)
                 .values(state=state, reason=reason[:2000], updated_at=now))


def set_plan_state(conn: Connection, plan_id: str, state: str, approved_by: str | None = None) -> None:
    values: dict[str, Any] = {"state": state}
    if approved_by is not None:
        values["approved_by"] = approved_by
    conn.execute(update(plans).where(plans.c.id == plan_id).values(**values))


def _multi_tier_bytes(conn: Connection, where: Any) -> dict[str, dict[str, int]]:
    rows = conn.execute(
        select(studies.c.study_uid, locations.c.tier, func.sum(locations.c.size_bytes))
        .join(instances, instances.c.study_pk == studies.c.id)
        .join(locations, locations.c.instance_pk == instances.c.id)
        .where(where, locations.c.state == CopyState.VERIFIED.value)
        .group_by(studies.c.study_uid, locations.c.tier)
    )
    out: dict[str, dict[str, int]] = {}
    for uid, tier, b in rows:
        out.setdefault(uid, {})[tier] = int(b)
    return out


# A study held on one tier has all its bytes there (studies.tiers and
# size_bytes say so without reading locations); only studies on several tiers,
# in the middle of a move, need their locations summed.
_MULTI = studies.c.tiers.contains("\\", autoescape=True)  # not LIKE '%\%': PostgreSQL reads \ as LIKE's escape


def tier_bytes(conn: Connection) -> dict[str, int]:
    """Bytes of verified copies per tier, active studies only."""
    out: dict[str, int] = {}
    rows = conn.execute(
        select(studies.c.tiers, func.coalesce(func.sum(studies.c.size_bytes), 0))
        .where(studies.c.state == "active", studies.c.tiers != "", ~_MULTI)
        .group_by(studies.c.tiers)
    )
    for tier, b in rows:
        out[tier] = out.get(tier, 0) + int(b)
    for per in _multi_tier_bytes(conn, (studies.c.state == "active") & _MULTI).values():
        for tier, b in per.items():
            out[tier] = out.get(tier, 0) + b
    return out


def study_tier_bytes(conn: Connection, study_uids: list[str]) -> dict[str, dict[str, int]]:
    """Study UID -> tier -> bytes of verified copies, for the studies named."""
    out: dict[str, dict[str, int]] = {}
    for i in range(0, len(study_uids), 500):
        chunk = study_uids[i:i + 500]
        multi = []
        for uid, tiers, size in conn.execute(
            select(studies.c.study_uid, studies.c.tiers, studies.c.size_bytes).where(studies.c.study_uid.in_(chunk))
        ):
            if "\\" in tiers:
                multi.append(uid)
            elif tiers:
                out[uid] = {tiers: int(size)}
        if multi:
            out.update(_multi_tier_bytes(conn, studies.c.study_uid.in_(multi)))
    return out
