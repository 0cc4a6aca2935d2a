"""Storing plans and their actions, and what apply records of them.

A plan's actions are stored two ways. A study the pure evaluation decided
has a row of ``plan_actions`` with every field written out. A study a rule
decided in the database (ilm.catalog.policy_sql) has a row of integers in
``plan_rule_actions``: its id and the rule's code, which ``plans.rule_codes``
maps to the decision, tier, rule and reason; its fingerprint is rebuilt from
the instances, bytes and last read stored beside (its holds were 0). The
readers here return both as :class:`ActionRow`, the rule's rows first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from ilm.catalog.schema import instances, locations, plan_actions, plan_rule_actions, plans, studies
from ilm.models import CopyState

__all__ = [
    "PlanRow",
    "ActionRow",
    "insert_plan",
    "plan_action_totals",
    "fingerprint_text",
    "rule_codes_of",
    "keep_rule_actions",
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


def fingerprint_text(instance_count: int, size_bytes: int, last_accessed_at: datetime | None, holds: int) -> str:
    """What apply re-checks of a study: ``instances/bytes/last read/holds``, the last read as its UTC
    wall clock ``YYYY-MM-DD HH:MM:SS.ffffff`` (empty if never read)."""
    last = last_accessed_at
    if last is not None and last.tzinfo is not None:
        last = last.astimezone(timezone.utc).replace(tzinfo=None)
    read = last.isoformat(" ", "microseconds") if last is not None else ""
    return f"{instance_count}/{size_bytes}/{read}/{holds}"


RuleCodes = dict[int, tuple[str, str | None, str, str]]  # code -> (decision, target tier, rule id, reason)


def insert_plan(conn: Connection, plan: PlanRow, actions: list[dict[str, Any]],
                rule_codes: RuleCodes | None = None) -> None:
    conn.execute(plans.insert().values(
        id=plan.id, created_at=plan.created_at, created_by=plan.created_by, as_of=plan.as_of,
        policy_name=plan.policy_name, policy_path=plan.policy_path, policy_sha256=plan.policy_sha256,
        catalog_sha256=plan.catalog_sha256, plan_sha256=plan.plan_sha256, state=plan.state,
        approved_by=plan.approved_by, summary=json.dumps(plan.summary, sort_keys=True),
        rule_codes=json.dumps({str(k): list(v) for k, v in rule_codes.items()}) if rule_codes else None,
    ))
    for i in range(0, len(actions), 5000):
        conn.execute(plan_actions.insert(), [dict(a, plan_id=plan.id) for a in actions[i:i + 5000]])


def rule_codes_of(conn: Connection, plan_id: str) -> RuleCodes:
    """The codes of a plan's plan_rule_actions rows that are actions (the others are studies a rule kept)."""
    raw = conn.execute(select(plans.c.rule_codes).where(plans.c.id == plan_id)).scalar()
    if not raw:
        return {}
    return {int(k): (v[0], v[1], v[2], v[3]) for k, v in json.loads(raw).items()}


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
    """A plan's actions: the rows a rule decided (by study id), then the others (as written)."""
    codes = rule_codes_of(conn, plan_id)
    taken = 0
    if codes:
        r = plan_rule_actions.c
        where = [r.plan_id == plan_id, r.code.in_(sorted(codes))]
        if states:
            where.append(r.state.in_(states))
        first = (select(studies.c.study_uid, r.code, r.instance_count, r.size_bytes, r.last_accessed_at, r.state,
                        r.reason).join(studies, studies.c.id == r.study_pk).where(*where).order_by(r.study_pk))
        n_first = None
        if limit is not None or offset:
            n_first = int(conn.execute(select(func.count()).select_from(plan_rule_actions).where(*where)).scalar_one())
            first = first.limit(limit).offset(offset)
        for row in conn.execute(first.execution_options(yield_per=20_000)):
            decision, tier, rule_id, reason = codes[int(row.code)]
            taken += 1
            yield ActionRow(row.study_uid, decision, tier, rule_id, [],
                            fingerprint_text(int(row.instance_count), int(row.size_bytes), row.last_accessed_at, 0),
                            int(row.instance_count), int(row.size_bytes), row.state,
                            reason if row.reason is None else row.reason)
        if n_first is not None:
            offset = max(0, offset - n_first)
            if limit is not None:
                limit -= taken
                if limit <= 0:
                    return
    q = select(plan_actions).where(plan_actions.c.plan_id == plan_id).order_by(plan_actions.c.id)
    if states:
        q = q.where(plan_actions.c.state.in_(states))
    if limit is not None or offset:
        q = q.limit(limit).offset(offset)
    for a in conn.execute(q):
        yield ActionRow(a.study_uid, a.decision, a.target_tier, a.rule_id, json.loads(a.vetoes or "[]"),
                        a.fingerprint, a.instance_count, int(a.size_bytes), a.state, a.reason)


def plan_action_totals(conn: Connection, plan_id: str) -> dict[tuple[str, str], tuple[int, int]]:
    """(state, decision) -> (actions, bytes) of one plan: an apply's progress in one query per table."""
    q = (select(plan_actions.c.state, plan_actions.c.decision, func.count(),
                func.coalesce(func.sum(plan_actions.c.size_bytes), 0))
         .where(plan_actions.c.plan_id == plan_id).group_by(plan_actions.c.state, plan_actions.c.decision))
    out = {(str(s), str(d)): (int(n), int(b)) for s, d, n, b in conn.execute(q)}
    codes = rule_codes_of(conn, plan_id)
    if codes:
        r = plan_rule_actions.c
        q = (select(r.state, r.code, func.count(), func.coalesce(func.sum(r.size_bytes), 0))
             .where(r.plan_id == plan_id, r.code.in_(sorted(codes))).group_by(r.state, r.code))
        for state, code, n, b in conn.execute(q):
            key = (str(state), codes[int(code)][0])
            had = out.get(key, (0, 0))
            out[key] = (had[0] + int(n), had[1] + int(b))
    return out


def set_action_state(conn: Connection, plan_id: str, study_uid: str, state: str, reason: str, now: datetime) -> None:
    done = conn.execute(update(plan_actions)
                        .where(plan_actions.c.plan_id == plan_id, plan_actions.c.study_uid == study_uid)
                        .values(state=state, reason=reason[:2000], updated_at=now))
    if done.rowcount == 0:
        r = plan_rule_actions.c
        conn.execute(update(plan_rule_actions)
                     .where(r.plan_id == plan_id,
                            r.study_pk == select(studies.c.id).where(studies.c.study_uid == study_uid).scalar_subquery())
                     .values(state=state, reason=reason[:2000], updated_at=now))


def keep_rule_actions(conn: Connection, study_pk: int, study_uid: str) -> None:
    """Before a study's row is deleted (purge): its plan_rule_actions rows that are actions become
    plan_actions rows, which name the study by UID, so that the plans still list it."""
    r = plan_rule_actions.c
    rows = conn.execute(select(plan_rule_actions, plans.c.rule_codes)
                        .join(plans, plans.c.id == r.plan_id).where(r.study_pk == study_pk)).all()
    for row in rows:
        codes = {int(k): v for k, v in json.loads(row.rule_codes or "{}").items()}
        if int(row.code) in codes:
            decision, tier, rule_id, reason = codes[int(row.code)]
            conn.execute(plan_actions.insert().values(
                plan_id=row.plan_id, study_uid=study_uid, decision=decision, target_tier=tier, rule_id=rule_id,
                vetoes="[]", fingerprint=fingerprint_text(int(row.instance_count), int(row.size_bytes),
                                                          row.last_accessed_at, 0),
                instance_count=row.instance_count, size_bytes=row.size_bytes, state=row.state,
                reason=reason if row.reason is None else row.reason, updated_at=row.updated_at))
    conn.execute(plan_rule_actions.delete().where(r.study_pk == study_pk))


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
