"""Holds, two-phase expiry (quarantine, then purge) and restore, each audited.

Expiry never deletes: it hides the study for the configured quarantine
period. ``purge`` deletes only what is past quarantine, leaves a tombstone,
and can be re-run after a crash (a study marked 'purging' is finished). A
study with a copy locked on a WORM tier stays in quarantine until the lock ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.retention import (
    HoldRow,
    add_hold,
    begin_purge,
    finish_purge,
    holds_covering,
    list_holds,
    quarantine_study,
    quarantined_studies,
    release_hold,
    restore_study,
    set_label,
    study_state,
)
from ilm.errors import IlmError, NotFound, StorageError
from ilm.lifecycle.worm import purge_lock
from ilm.storage import Tier

__all__ = ["label", "place_hold", "lift_hold", "holds", "expire_study", "restore", "purge", "PurgeReport"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def place_hold(catalog: Catalog, scope: str, target: str, reason: str, by: str) -> int:
    if scope not in ("study", "patient"):
        raise IlmError(f"hold scope must be 'study' or 'patient', not {scope!r}")
    if not reason.strip():
        raise IlmError("a legal hold needs a reason")
    now = _now()
    with catalog.write() as conn:
        hold_id = add_hold(conn, scope, target, reason.strip(), by, now)
        append_audit(conn, at=now, actor=by, action="hold.add", study_uid=target if scope == "study" else None,
                     detail={"hold": hold_id, "scope": scope, "target": target, "reason": reason.strip()})
    return hold_id


def lift_hold(catalog: Catalog, hold_id: int, by: str) -> HoldRow:
    now = _now()
    with catalog.write() as conn:
        row = release_hold(conn, hold_id, by, now)
        if row is None:
            raise NotFound(f"no active hold with id {hold_id}")
        append_audit(conn, at=now, actor=by, action="hold.remove",
                     study_uid=row.target if row.scope == "study" else None,
                     detail={"hold": hold_id, "scope": row.scope, "target": row.target})
    return row


def holds(catalog: Catalog, *, active_only: bool = True) -> list[HoldRow]:
    with catalog.read() as conn:
        return list_holds(conn, active_only=active_only)


def expire_study(catalog: Catalog, study_uid: str, *, quarantine: timedelta, by: str,
                 rule: str | None = None, plan: str | None = None) -> bool:
    """Move an active study into quarantine (hidden, restorable).

    False, changing nothing, if the study is not active or a legal hold covers it.
    """
    now = _now()
    with catalog.write() as conn:
        if holds_covering(conn, study_uid):
            return False
        done = quarantine_study(conn, study_uid, rule=rule, plan=plan, until=now + quarantine, now=now)
        if done:
            append_audit(conn, at=now, actor=by, action="study.expire", study_uid=study_uid, plan_id=plan,
                         rule_id=rule, detail={"quarantine_until": (now + quarantine).isoformat()})
    return done


def restore(catalog: Catalog, study_uid: str, by: str) -> None:
    now = _now()
    with catalog.write() as conn:
        if not restore_study(conn, study_uid, now):
            state = study_state(conn, study_uid)
            if state is None:
                raise NotFound(f"no study {study_uid} in the catalog (a purged study cannot be restored)")
            raise IlmError(f"study {study_uid} is {state}, not quarantined: nothing to restore")
        append_audit(conn, at=now, actor=by, action="study.restore", study_uid=study_uid)


@dataclass
class PurgeReport:
    purged: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    problems: list[str] = field(default_factory=list)
    waiting: int = 0
    released: int = 0  # WORM copies kept by moves, dropped now that their lock ended


def purge(catalog: Catalog, tiers: Callable[[str], Tier], *, by: str, now: datetime | None = None,
          progress: Callable[[str], None] | None = None) -> PurgeReport:
    """Delete every study past quarantine (and finish interrupted purges)."""
    now = now or _now()
    report = PurgeReport()
    with catalog.read() as conn:
        due = quarantined_studies(conn, due_by=now)
        report.waiting = len(quarantined_studies(conn)) - len(due)
    for q in due:
        with catalog.read() as conn:
            held = holds_covering(conn, q.study_uid)
        if held:  # a hold placed during quarantine still vetoes the deletion
            report.problems.append(f"{q.study_uid}: kept, legal hold {held[0].id}: {held[0].reason}")
            continue
        locked = purge_lock(catalog, q.study_uid, now)
        if locked is not None:  # a WORM copy: the study waits in quarantine until its date
            report.problems.append(f"{q.study_uid}: kept, locked until {locked:%Y-%m-%d %H:%M} UTC (WORM copies)")
            continue
        with catalog.write() as conn:
            copies = begin_purge(conn, q.study_uid, _now())
        if copies is None:
            continue
        try:
            for c in copies:
                tiers(c.tier).delete(c.key)
        except StorageError as exc:
            report.problems.append(f"{q.study_uid}: {exc} (the study stays 'purging'; run purge again)")
            continue
        t = _now()
        with catalog.write() as conn:
            if finish_purge(conn, q.study_uid, approved_by=by, now=t):
                append_audit(conn, at=t, actor=by, action="study.purge", study_uid=q.study_uid, plan_id=q.plan,
                             rule_id=q.rule, detail={"instances": q.instance_count, "bytes": q.size_bytes,
                                                     "copies_deleted": len(copies)})
                report.purged.append(q.study_uid)
                report.bytes_freed += sum(c.size for c in copies)
        if progress:
            progress(q.study_uid)
    return report


def label(catalog: Catalog, study_uid: str, name: str, *, present: bool, by: str) -> None:
    """Add or remove a label that policies can match (``labels:`` condition)."""
    name = name.strip()
    if not name or "\\" in name or len(name) > 64:
        raise IlmError(f"label {name!r}: 1-64 characters, no backslash")
    now = _now()
    with catalog.write() as conn:
        if not set_label(conn, study_uid, name, present, now):
            raise NotFound(f"no study {study_uid} in the catalog")
        append_audit(conn, at=now, actor=by, action="label.add" if present else "label.remove",
                     study_uid=study_uid, detail={"label": name})
