"""What DICOM audit messages need from the catalog (see ilm.atna).

The study and patient of a message (from the catalog, or from the tombstone
of a purged study), and the audit trail's entries not yet sent, claimed under
a lock so that two processes never send the same entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ilm.atna.messages import StudyObject
from ilm.audit import AuditEntry
from ilm.catalog.schema import audit_export, audit_log, instances, patients, studies, tombstones

__all__ = ["study_objects", "claim_audit_entries", "audit_entries_since"]


def study_objects(conn: Connection, study_uids: Iterable[str]) -> dict[str, StudyObject]:
    """Study, patient and instances per SOP class of each study the catalog knows (purged: the tombstone's patient)."""
    uids = sorted(set(study_uids))
    out: dict[str, StudyObject] = {}
    for i in range(0, len(uids), 500):
        chunk = uids[i:i + 500]
        rows = conn.execute(
            select(studies.c.id, studies.c.study_uid, studies.c.accession_number, patients.c.patient_id,
                   patients.c.issuer, patients.c.name)
            .join(patients, patients.c.id == studies.c.patient_pk).where(studies.c.study_uid.in_(chunk))
        ).all()
        pks = {r.id: r for r in rows}
        counts: dict[int, list[tuple[str, int]]] = {}
        if pks:
            for pk, sop_class, n in conn.execute(
                select(instances.c.study_pk, instances.c.sop_class_uid, func.count())
                .where(instances.c.study_pk.in_(list(pks)))
                .group_by(instances.c.study_pk, instances.c.sop_class_uid)
                .order_by(instances.c.study_pk, instances.c.sop_class_uid)
            ):
                counts.setdefault(pk, []).append((sop_class, int(n)))
        for r in rows:
            out[r.study_uid] = StudyObject(r.study_uid, r.patient_id, r.issuer, r.name, r.accession_number,
                                           tuple(counts.get(r.id, ())))
        missing = [u for u in chunk if u not in out]
        if missing:
            for t in conn.execute(select(tombstones.c.study_uid, tombstones.c.patient_id)
                                  .where(tombstones.c.study_uid.in_(missing))):
                out[t.study_uid] = StudyObject(t.study_uid, t.patient_id)
    return out


def _entry(r: object) -> AuditEntry:
    return AuditEntry(
        at=r.at, actor=r.actor, action=r.action, study_uid=r.study_uid, plan_id=r.plan_id,  # type: ignore[attr-defined]
        rule_id=r.rule_id, detail=json.loads(r.detail), id=r.id, prev_hash=r.prev_hash,  # type: ignore[attr-defined]
        hash=r.hash,  # type: ignore[attr-defined]
    )


def claim_audit_entries(conn: Connection, name: str, now: datetime, *, limit: int = 500) -> list[AuditEntry]:
    """Inside the caller's write transaction: the entries after the stream's position,
    which moves past them. A new stream starts at the end of the trail (the history
    is exported with ``ilm audit export``)."""
    row = conn.execute(select(audit_export.c.last_id).where(audit_export.c.name == name).with_for_update()).first()
    last = conn.execute(select(func.max(audit_log.c.id))).scalar() or 0
    if row is None:
        conn.execute(audit_export.insert().values(name=name, last_id=last, updated_at=now))
        return []
    if last <= row.last_id:
        return []
    entries = [_entry(r) for r in conn.execute(
        select(audit_log).where(audit_log.c.id > row.last_id).order_by(audit_log.c.id).limit(limit))]
    conn.execute(audit_export.update().where(audit_export.c.name == name)
                 .values(last_id=entries[-1].id, updated_at=now))
    return entries


def audit_entries_since(conn: Connection, since: datetime | None) -> Iterator[AuditEntry]:
    q = select(audit_log).order_by(audit_log.c.id)
    if since is not None:
        q = q.where(audit_log.c.at >= since)
    for r in conn.execute(q):
        yield _entry(r)
