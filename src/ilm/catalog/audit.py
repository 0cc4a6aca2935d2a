"""Storing and reading the audit trail (see ilm.audit for the chain)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection

from ilm.audit import GENESIS, AuditEntry, canonical_detail, entry_hash
from ilm.catalog.schema import audit_log

__all__ = ["append_audit", "read_audit"]

_LOCK_KEY = 0x11A0D17  # advisory lock id that serialises appends on PostgreSQL


def append_audit(
    conn: Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    study_uid: str | None = None,
    plan_id: str | None = None,
    rule_id: str | None = None,
    detail: dict[str, object] | None = None,
) -> str:
    """Append one entry inside the caller's write transaction; return its hash."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    prev = conn.execute(select(audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)).scalar() or GENESIS
    entry = AuditEntry(at=at, actor=actor, action=action, study_uid=study_uid, plan_id=plan_id,
                       rule_id=rule_id, detail=dict(detail or {}))
    h = entry_hash(prev, entry)
    conn.execute(
        audit_log.insert().values(
            at=at, actor=actor[:128], action=action, study_uid=study_uid, plan_id=plan_id, rule_id=rule_id,
            detail=canonical_detail(entry.detail), prev_hash=prev, hash=h,
        )
    )
    return h


def _audit_filter(q: Any, study_uid: str | None, plan_id: str | None) -> Any:
    if study_uid:
        q = q.where(audit_log.c.study_uid == study_uid)
    if plan_id:
        q = q.where(audit_log.c.plan_id == plan_id)
    return q


def count_audit(conn: Connection, *, study_uid: str | None = None, plan_id: str | None = None) -> int:
    """How many entries (about one study or plan when given), counted in SQL."""
    q = _audit_filter(select(func.count()).select_from(audit_log), study_uid, plan_id)
    return int(conn.execute(q).scalar_one())


def read_audit(conn: Connection, *, study_uid: str | None = None, plan_id: str | None = None,
               limit: int | None = None, offset: int = 0, newest_first: bool = False) -> Iterator[AuditEntry]:
    """Entries in chain order (oldest first, or newest first), a page at a time in SQL."""
    q = _audit_filter(select(audit_log), study_uid, plan_id)
    q = q.order_by(audit_log.c.id.desc() if newest_first else audit_log.c.id)
    if limit:
        q = q.limit(limit)
    if offset:
        q = q.offset(offset)
    for r in conn.execute(q):
        yield AuditEntry(
            at=r.at, actor=r.actor, action=r.action, study_uid=r.study_uid, plan_id=r.plan_id, rule_id=r.rule_id,
            detail=json.loads(r.detail), id=r.id, prev_hash=r.prev_hash, hash=r.hash,
        )
