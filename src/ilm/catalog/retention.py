"""Catalog side of holds, quarantine, restore and purge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from ilm.catalog.copies import InstanceCopy, study_copies
from ilm.catalog.plans import keep_rule_actions
from ilm.catalog.schema import holds, instances, locations, moves, patients, series, studies, tombstones

__all__ = [
    "HoldRow",
    "patient_key",
    "add_hold",
    "release_hold",
    "list_holds",
    "quarantine_study",
    "restore_study",
    "QuarantinedStudy",
    "quarantined_studies",
    "begin_purge",
    "finish_purge",
    "study_state",
    "holds_covering",
    "set_label",
]


def patient_key(patient_id: str, issuer: str = "") -> str:
    """How holds and policies name a patient: ``ID`` or ``ISSUER:ID``."""
    return f"{issuer}:{patient_id}" if issuer else patient_id


@dataclass(frozen=True, slots=True)
class HoldRow:
    id: int
    scope: str
    target: str
    reason: str
    created_by: str
    created_at: datetime
    released_at: datetime | None
    released_by: str | None


def add_hold(conn: Connection, scope: str, target: str, reason: str, by: str, now: datetime) -> int:
    return int(conn.execute(
        holds.insert().values(scope=scope, target=target, reason=reason, created_by=by, created_at=now)
        .returning(holds.c.id)
    ).scalar_one())


def release_hold(conn: Connection, hold_id: int, by: str, now: datetime) -> HoldRow | None:
    res = conn.execute(
        update(holds).where(holds.c.id == hold_id, holds.c.released_at.is_(None))
        .values(released_at=now, released_by=by)
    )
    if res.rowcount == 0:
        return None
    return HoldRow(*conn.execute(select(holds).where(holds.c.id == hold_id)).one())


def list_holds(conn: Connection, *, active_only: bool = True) -> list[HoldRow]:
    q = select(holds).order_by(holds.c.id)
    if active_only:
        q = q.where(holds.c.released_at.is_(None))
    return [HoldRow(*r) for r in conn.execute(q)]


def study_state(conn: Connection, study_uid: str) -> str | None:
    return conn.execute(select(studies.c.state).where(studies.c.study_uid == study_uid)).scalar()


def quarantine_study(conn: Connection, study_uid: str, *, rule: str | None, plan: str | None,
                     until: datetime, now: datetime) -> bool:
    """Hide an active study until ``until``; its copies stay where they are."""
    res = conn.execute(
        update(studies).where(studies.c.study_uid == study_uid, studies.c.state == "active")
        .values(state="quarantined", quarantined_at=now, quarantine_until=until, expired_rule=rule,
                expired_plan=plan, updated_at=now)
    )
    return res.rowcount > 0


def restore_study(conn: Connection, study_uid: str, now: datetime) -> bool:
    res = conn.execute(
        update(studies).where(studies.c.study_uid == study_uid, studies.c.state == "quarantined")
        .values(state="active", quarantined_at=None, quarantine_until=None, expired_rule=None,
                expired_plan=None, updated_at=now)
    )
    return res.rowcount > 0


@dataclass(frozen=True, slots=True)
class QuarantinedStudy:
    study_uid: str
    state: str
    quarantined_at: datetime | None
    quarantine_until: datetime | None
    rule: str | None
    plan: str | None
    instance_count: int
    size_bytes: int


def quarantined_studies(conn: Connection, *, due_by: datetime | None = None) -> list[QuarantinedStudy]:
    """Quarantined studies (those due for purge by ``due_by`` when given) and
    studies whose purge a crash interrupted."""
    q = select(studies.c.study_uid, studies.c.state, studies.c.quarantined_at, studies.c.quarantine_until,
               studies.c.expired_rule, studies.c.expired_plan, studies.c.instance_count, studies.c.size_bytes)
    if due_by is None:
        q = q.where(studies.c.state.in_(("quarantined", "purging")))
    else:
        q = q.where((studies.c.state == "purging")
                    | ((studies.c.state == "quarantined") & (studies.c.quarantine_until <= due_by)))
    return [QuarantinedStudy(*r) for r in conn.execute(q.order_by(studies.c.quarantine_until))]


def begin_purge(conn: Connection, study_uid: str, now: datetime) -> list[InstanceCopy] | None:
    """Mark a quarantined study as being purged and return its copies to delete."""
    res = conn.execute(
        update(studies).where(studies.c.study_uid == study_uid, studies.c.state.in_(("quarantined", "purging")))
        .values(state="purging", updated_at=now)
    )
    if res.rowcount == 0:
        return None
    return study_copies(conn, study_uid)


def finish_purge(conn: Connection, study_uid: str, *, approved_by: str | None, now: datetime) -> bool:
    """After every object is deleted: leave a tombstone and remove the study's rows."""
    row = conn.execute(
        select(studies.c.id, studies.c.study_date, studies.c.instance_count, studies.c.size_bytes,
               studies.c.expired_rule, studies.c.expired_plan, studies.c.quarantined_at, patients.c.patient_id)
        .join(patients, patients.c.id == studies.c.patient_pk)
        .where(studies.c.study_uid == study_uid, studies.c.state == "purging")
    ).first()
    if row is None:
        return False
    conn.execute(tombstones.insert().values(
        study_uid=study_uid, patient_id=row.patient_id, study_date=row.study_date,
        instance_count=row.instance_count, size_bytes=row.size_bytes, rule_id=row.expired_rule,
        plan_id=row.expired_plan, approved_by=approved_by, expired_at=row.quarantined_at or now, purged_at=now,
    ))
    inst = select(instances.c.id).where(instances.c.study_pk == row.id).scalar_subquery()
    conn.execute(delete(locations).where(locations.c.instance_pk.in_(inst)))

    conn.execute(delete(moves).where(moves.c.instance_pk.in_(inst)))
    conn.execute(delete(instances).where(instances.c.study_pk == row.id))
    conn.execute(delete(series).where(series.c.study_pk == row.id))
    keep_rule_actions(conn, row.id, study_uid)  # the plans that acted on it keep naming it
    conn.execute(delete(studies).where(studies.c.id == row.id))
    return True


def holds_covering(conn: Connection, study_uid: str) -> list[HoldRow]:
    """Active holds on the study or on its patient."""
    pat = conn.execute(
        select(patients.c.patient_id, patients.c.issuer).join(studies, studies.c.patient_pk == patients.c.id)
        .where(studies.c.study_uid == study_uid)
    ).first()
    cond = (holds.c.scope == "study") & (holds.c.target == study_uid)
    if pat is not None:
        cond = cond | ((holds.c.scope == "patient") & (holds.c.target == patient_key(pat.patient_id, pat.issuer)))
    return [HoldRow(*r) for r in conn.execute(select(holds).where(cond, holds.c.released_at.is_(None)))]


def set_label(conn: Connection, study_uid: str, label: str, present: bool, now: datetime) -> bool:
    """Add or remove one label of a study; False when the study is unknown."""
    from ilm.catalog.records import merge_multi

    current = conn.execute(select(studies.c.labels).where(studies.c.study_uid == study_uid)).scalar()
    if current is None:
        return False
    if present:
        new = merge_multi(current, label)
    else:
        new = "\\".join(v for v in current.split("\\") if v and v != label)
    conn.execute(update(studies).where(studies.c.study_uid == study_uid).values(labels=new, updated_at=now))
    return True
