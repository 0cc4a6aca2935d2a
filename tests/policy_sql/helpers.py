"""Catalogs written row by row, and the two ways of deciding over them.

The rows go straight into the catalog tables, so that a test can hold what
no ingest would write: dates on 29 February, blanks around separators,
non-ASCII text, a PatientAge without a birth date, quarantined siblings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import sqlalchemy as sa

from ilm.catalog import Catalog
from ilm.catalog.facts import load_policy_inputs
from ilm.catalog.policy_sql import NotCompilable, SqlPlan, consistent_read, no_rule_decision, plan_in_sql
from ilm.catalog.schema import audit_log, holds, patients, plan_actions, plan_rule_actions, plans, studies
from ilm.policy import Decision, Policy, evaluate, parse_policy
from ilm.policy.conditions import AttributeCondition, Condition, NotCondition, AnyCondition
from ilm.policy.matchers import Negated, Regex

__all__ = ["P", "S", "H", "load", "decide_both", "has_regex", "policy", "TIERS", "utc"]

TIERS = ("hot", "warm")
MG = "1.2.840.10008.5.1.4.1.1.1.2"
CT = "1.2.840.10008.5.1.4.1.1.2"


def utc(d: date, hour: int = 12) -> datetime:
    return datetime(d.year, d.month, d.day, hour, tzinfo=timezone.utc)


@dataclass
class P:
    """A patient row."""

    patient_id: str
    birth_date: date | None = date(1960, 5, 5)
    birth_date_raw: str | None = None  # default: the date as YYYYMMDD, or ""
    issuer: str = ""
    sex: str = "F"


@dataclass
class S:
    """A study row; ``patient`` is the index of its patient."""

    uid: str
    patient: int = 0
    study_date: date | None = date(2010, 3, 1)
    study_date_raw: str | None = None
    patient_age: str = ""
    modalities: str = "CT"
    sop_classes: str = CT
    body_parts: str = "CHEST"
    description: str = "CT CHEST"
    institution: str = "General"
    labels: str = ""
    tiers: str = "hot"
    size_bytes: int = 1000
    instance_count: int = 10
    state: str = "active"
    received_at: datetime | None = None  # default: noon UTC of the study date (or 2010-01-01)
    last_accessed_at: datetime | None = None
    identity_removed: bool = False


@dataclass
class H:
    """A hold on a study (target: UID) or a patient (target: patient key)."""

    scope: str
    target: str
    released: bool = False
    reason: str = "litigation"


@dataclass
class Archive:
    patients: list[P] = field(default_factory=list)
    studies: list[S] = field(default_factory=list)
    holds: list[H] = field(default_factory=list)


def reset(conn: sa.engine.Connection) -> None:
    for t in (plan_actions, plan_rule_actions, plans, audit_log, holds, studies, patients):
        conn.execute(t.delete())


def load(catalog: Catalog, pats: list[P], rows: list[S], hold_rows: list[H] = ()) -> None:  # type: ignore[assignment]
    """Replace the catalog's content with these rows."""
    with catalog.write() as conn:
        reset(conn)
        if pats:
            conn.execute(patients.insert(), [dict(
                id=i + 1, patient_id=p.patient_id, issuer=p.issuer, name="", birth_date=p.birth_date,
                birth_date_raw=p.birth_date_raw if p.birth_date_raw is not None
                else (p.birth_date.strftime("%Y%m%d") if p.birth_date else ""), sex=p.sex,
            ) for i, p in enumerate(pats)])
        if rows:
            conn.execute(studies.insert(), [dict(
                id=i + 1, study_uid=s.uid, patient_pk=s.patient + 1, study_date=s.study_date,
                study_date_raw=s.study_date_raw if s.study_date_raw is not None
                else (s.study_date.strftime("%Y%m%d") if s.study_date else ""),
                patient_age=s.patient_age, modalities=s.modalities, sop_classes=s.sop_classes,
                body_parts=s.body_parts, description=s.description, institution_name=s.institution,
                labels=s.labels, tiers=s.tiers, size_bytes=s.size_bytes, instance_count=s.instance_count,
                series_count=1, state=s.state,
                received_at=s.received_at or utc(s.study_date or date(2010, 1, 1)),
                updated_at=s.received_at or utc(s.study_date or date(2010, 1, 1)),
                last_accessed_at=s.last_accessed_at, patient_identity_removed=s.identity_removed,
            ) for i, s in enumerate(rows)])
        if hold_rows:
            now = datetime(2020, 1, 1, tzinfo=timezone.utc)
            conn.execute(holds.insert(), [dict(
                id=i + 1, scope=h.scope, target=h.target, reason=h.reason, created_by="t", created_at=now,
                released_at=now if h.released else None, released_by="t" if h.released else None,
            ) for i, h in enumerate(hold_rows)])


@dataclass
class Both:
    pure: dict[str, Decision]
    fast: dict[str, Decision] | None   # None: the policy was not compiled (pure fallback)
    sql: SqlPlan | None


def decide_both(catalog: Catalog, policy: Policy, as_of: date) -> Both:
    """Every active study's decision by the pure evaluate() and by the SQL path (None: it fell back)."""
    with catalog.read() as conn:
        consistent_read(conn)
        inputs = load_policy_inputs(conn)
        pure = {s.study_uid: evaluate(policy, s, inputs.patients.get(s.patient_key), as_of) for s in inputs.studies}
    with catalog.write() as conn:  # the codes are written (under a plan id of their own, deleted by close())
        consistent_read(conn)
        sql = plan_in_sql(conn, policy, as_of)
        if sql is None:
            return Both(pure, None, None)
        try:
            sql.decide()
        except NotCompilable:
            return Both(pure, None, None)
        fast = {d.study_uid: d for d, _ in sql.stream()}
        sql.close()
    for uid in pure:
        fast.setdefault(uid, no_rule_decision(uid))
    return Both(pure, fast, sql)


def _condition_has_regex(c: Condition) -> bool:
    if isinstance(c, AttributeCondition):
        m = c.matcher
        while isinstance(m, Negated):
            m = m.inner
        return isinstance(m, Regex)
    if isinstance(c, NotCondition):
        return any(_condition_has_regex(x) for x in c.inner)
    if isinstance(c, AnyCondition):
        return any(_condition_has_regex(x) for g in c.groups for x in g)
    return False


def has_regex(policy: Policy) -> bool:
    return any(_condition_has_regex(c) for r in policy.rules for c in r.conditions)


def policy(text: str) -> Policy:
    return parse_policy(text, known_tiers=TIERS, source="test.yaml")
