"""Catalog side of immutability (WORM): each copy's retain-until, and copies kept for it.

A copy written to a WORM tier carries ``locations.retain_until`` and
``lock_mode``. The plan reads the latest date of a study's copies
(:func:`study_locks`); a move whose source copy is locked keeps that copy as
RETAINED instead of deleting it (:func:`retain_sources`), and a later run
drops it once its date has passed (:func:`released_copies`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, exists, func, literal, select, update
from sqlalchemy.engine import Connection

from ilm.catalog.copies import refresh_study_tiers
from ilm.catalog.schema import holds, instances, locations, moves, patients, studies
from ilm.models import CopyState

__all__ = [
    "study_locks", "locked_instances", "retain_copy", "retain_sources", "ReleasedCopy", "released_copies", "drop_released",
    "WormCopy", "copies_on_tiers", "held_studies", "studies_covered", "TierLocks", "lock_summary",
]

_PRESENT = (CopyState.VERIFIED.value, CopyState.RETAINED.value, CopyState.DELETING.value)


def study_locks(conn: Connection, study_uids: Iterable[str] | None = None, *,
                after: datetime | None = None) -> dict[str, datetime]:
    """Study UID -> the latest retain-until of its copies (only those after ``after``, when given)."""
    q = (select(studies.c.study_uid, func.max(locations.c.retain_until))
         .join(instances, instances.c.id == locations.c.instance_pk)
         .join(studies, studies.c.id == instances.c.study_pk)
         .where(locations.c.retain_until.is_not(None), locations.c.state.in_(_PRESENT))
         .group_by(studies.c.study_uid))
    if after is not None:
        q = q.where(locations.c.retain_until > after)
    if study_uids is not None:
        uids = list(study_uids)
        out: dict[str, datetime] = {}
        for i in range(0, len(uids), 500):
            out.update({r[0]: _aware(r[1]) for r in conn.execute(q.where(studies.c.study_uid.in_(uids[i:i + 500])))})
        return out
    return {r[0]: _aware(r[1]) for r in conn.execute(q)}


def _aware(v: datetime) -> datetime:
    return v if v.tzinfo is not None else v.replace(tzinfo=timezone.utc)


def locked_instances(conn: Connection, instance_pks: list[int], tier: str, now: datetime) -> dict[int, datetime]:
    """Of these instances, those whose copy on ``tier`` is locked after ``now``: instance pk -> retain-until."""
    out: dict[int, datetime] = {}
    for i in range(0, len(instance_pks), 500):
        out.update({int(r[0]): _aware(r[1]) for r in conn.execute(
            select(locations.c.instance_pk, locations.c.retain_until)
            .where(locations.c.tier == tier, locations.c.instance_pk.in_(instance_pks[i:i + 500]),
                   locations.c.retain_until > now))})
    return out


def retain_copy(conn: Connection, instance_pk: int, tier: str) -> None:
    """Keep one copy as RETAINED (its instance is verified elsewhere; the copy is locked)."""
    conn.execute(update(locations).where(locations.c.instance_pk == instance_pk, locations.c.tier == tier)
                 .values(state=CopyState.RETAINED.value))
    refresh_study_tiers(conn, [instance_pk])


def retain_sources(conn: Connection, items: list[tuple[int, int, str]], now: datetime) -> None:
    """Moved, but the source copy is locked: keep it as RETAINED (not read, not counted in
    studies.tiers) and close the journal. ``items`` holds (move id, instance pk, source tier)."""
    if not items:
        return
    conn.execute(update(locations).where(locations.c.instance_pk == bindparam("ipk"),
                                         locations.c.tier == bindparam("src")).values(state=CopyState.RETAINED.value),
                 [{"ipk": ipk, "src": src} for _m, ipk, src in items])
    conn.execute(update(moves).where(moves.c.id.in_([m for m, _i, _s in items])).values(state="done", updated_at=now))
    refresh_study_tiers(conn, [i[1] for i in items])


@dataclass(frozen=True, slots=True)
class ReleasedCopy:
    instance_pk: int
    tier: str
    key: str


def released_copies(conn: Connection, now: datetime, limit: int = 10_000) -> list[ReleasedCopy]:
    """RETAINED copies whose lock has ended and whose instance has a verified copy elsewhere."""
    other = locations.alias()
    rows = conn.execute(
        select(locations.c.instance_pk, locations.c.tier, locations.c.object_key)
        .where(locations.c.state == CopyState.RETAINED.value,
               (locations.c.retain_until.is_(None)) | (locations.c.retain_until <= now),
               exists(select(other.c.id).where(and_(other.c.instance_pk == locations.c.instance_pk,
                                                    other.c.tier != locations.c.tier,
                                                    other.c.state == CopyState.VERIFIED.value))))
        .order_by(locations.c.id).limit(limit))
    return [ReleasedCopy(int(r[0]), r[1], r[2]) for r in rows]


def drop_released(conn: Connection, copies: list[ReleasedCopy]) -> None:
    """Remove the rows of RETAINED copies whose objects were deleted."""
    for c in copies:
        conn.execute(delete(locations).where(locations.c.instance_pk == c.instance_pk, locations.c.tier == c.tier,
                                             locations.c.state == CopyState.RETAINED.value))
    if copies:
        refresh_study_tiers(conn, [c.instance_pk for c in copies])


@dataclass(frozen=True, slots=True)
class TierLocks:
    """What one tier holds under lock, as the catalog records it."""

    tier: str
    locked: int                    # copies whose retain-until is still ahead
    locked_bytes: int
    locked_until: datetime | None  # the latest of those dates
    retained: int                  # copies kept after a move only for their lock
    retained_bytes: int
    next_release: datetime | None  # the earliest date one of them may be dropped


def lock_summary(conn: Connection, now: datetime) -> list[TierLocks]:
    """Per tier with any locked or retained copy: counts, bytes and dates."""
    c = locations.c
    ahead = and_(c.retain_until > now, c.state.in_(_PRESENT))
    kept = c.state == CopyState.RETAINED.value

    def n(cond: Any) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    def size(cond: Any) -> Any:
        return func.coalesce(func.sum(case((cond, c.size_bytes), else_=0)), 0)

    rows = conn.execute(
        select(c.tier, n(ahead), size(ahead), func.max(case((ahead, c.retain_until), else_=None)),
               n(kept), size(kept), func.min(case((kept, c.retain_until), else_=None)))
        .where(c.retain_until.is_not(None)).group_by(c.tier).order_by(c.tier))
    return [TierLocks(r[0], int(r[1]), int(r[2]), _aware(r[3]) if r[3] else None, int(r[4]), int(r[5]),
                      _aware(r[6]) if r[6] else None) for r in rows if int(r[1]) or int(r[4])]


@dataclass(frozen=True, slots=True)
class WormCopy:
    study_uid: str
    tier: str
    key: str


def copies_on_tiers(conn: Connection, study_uids: list[str], tiers: list[str]) -> list[WormCopy]:
    """The copies of these studies that are on these tiers (one per object: a packed study's instances share one)."""
    out: set[WormCopy] = set()
    if not tiers:
        return []
    for i in range(0, len(study_uids), 500):
        rows = conn.execute(
            select(studies.c.study_uid, locations.c.tier, locations.c.object_key)
            .join(instances, instances.c.id == locations.c.instance_pk)
            .join(studies, studies.c.id == instances.c.study_pk)
            .where(studies.c.study_uid.in_(study_uids[i:i + 500]), locations.c.tier.in_(tiers),
                   locations.c.state.in_(_PRESENT)))
        out.update(WormCopy(r[0], r[1], r[2]) for r in rows)
    return sorted(out, key=lambda c: (c.study_uid, c.tier, c.key))


def _patient_key_sql() -> Any:
    p = patients.c
    return case((p.issuer != "", p.issuer + literal(":") + p.patient_id), else_=p.patient_id)


def studies_covered(conn: Connection, scope: str, target: str) -> list[str]:
    """The studies a hold on ``scope`` (study | patient) ``target`` covers, in any state but purged."""
    if scope == "study":
        return [r[0] for r in conn.execute(select(studies.c.study_uid).where(studies.c.study_uid == target))]
    key = _patient_key_sql()
    q = (select(studies.c.study_uid).join(patients, patients.c.id == studies.c.patient_pk)
         .where(key == target).order_by(studies.c.study_uid))
    return [r[0] for r in conn.execute(q)]


def held_studies(conn: Connection, study_uids: list[str]) -> set[str]:
    """Of these studies, those an active hold covers (on the study or on its patient)."""
    active = holds.c.released_at.is_(None)
    on_study = {r[0] for r in conn.execute(select(holds.c.target).where(active, holds.c.scope == "study"))}
    on_patient = {r[0] for r in conn.execute(select(holds.c.target).where(active, holds.c.scope == "patient"))}
    out = {u for u in study_uids if u in on_study}
    if on_patient:
        key = _patient_key_sql()
        for i in range(0, len(study_uids), 500):
            q = (select(studies.c.study_uid, key).join(patients, patients.c.id == studies.c.patient_pk)
                 .where(studies.c.study_uid.in_(study_uids[i:i + 500])))
            out.update(uid for uid, k in conn.execute(q) if k in on_patient)
    return out
