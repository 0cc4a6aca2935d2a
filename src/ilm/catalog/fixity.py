"""Catalog side of fixity checks (ilm verify, the scrub of ilm serve).

Which copies to check, what a check found (``verified_at`` moves forward, or
the copy is marked 'bad'/'missing' with ``problem``/``problem_at``), where a
repair can copy from, and the replica copies a tier's ``replicas`` option asks for.
A marked copy is never served: reads pick VERIFIED copies only
(``ilm.catalog.access.instance_refs``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, false, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from ilm.catalog.copies import InstanceCopy, refresh_study_tiers
from ilm.catalog.schema import instances, locations, studies
from ilm.models import CopyState

__all__ = [
    "CheckedCopy", "CopyToCheck", "RepairSource", "ReplicaTodo", "add_replica", "candidate_ids", "candidate_page",
    "candidate_totals", "copies_by_ids", "copy_on_tier", "fixity_counts", "mark_repaired", "marked_copies", "missing_replicas",
    "record_checks", "repair_sources",
]

CHECKED_STATES = (CopyState.VERIFIED.value, CopyState.BAD.value, CopyState.MISSING.value)
_PROBLEM_STATES = (CopyState.BAD.value, CopyState.MISSING.value)


@dataclass(frozen=True, slots=True)
class CopyToCheck:
    location_id: int
    instance_pk: int
    sop_uid: str
    study_uid: str
    tier: str
    key: str
    size: int
    sha256: str
    state: str
    pack_offset: int | None
    pack_length: int | None


@dataclass(frozen=True, slots=True)
class CheckedCopy:
    """What one check found: ``state`` VERIFIED, BAD or MISSING, and why."""

    copy: CopyToCheck
    state: str
    problem: str = ""


@dataclass(frozen=True, slots=True)
class RepairSource:
    tier: str
    key: str


def _last_checked() -> ColumnElement[Any]:
    """When a copy was last checked: verified_at while good, problem_at once marked."""
    return func.coalesce(locations.c.problem_at, locations.c.verified_at)


def _candidates(cols: Sequence[Any], tiers: Sequence[str], study_uid: str | None,
                checked_before: datetime | None) -> Select[Any]:
    """The copies on ``tiers`` to check: good or marked (not being written or deleted)."""
    q = select(*cols).select_from(locations).where(locations.c.tier.in_(list(tiers)),
                                                   locations.c.state.in_(CHECKED_STATES))
    if study_uid is not None:
        q = q.join(instances, instances.c.id == locations.c.instance_pk).join(
            studies, studies.c.id == instances.c.study_pk).where(studies.c.study_uid == study_uid)
    if checked_before is not None:
        last = _last_checked()
        q = q.where(or_(last.is_(None), last < checked_before))
    return q


def candidate_ids(conn: Connection, *, tiers: Sequence[str], study_uid: str | None = None,
                  checked_before: datetime | None = None, limit: int | None = None) -> list[tuple[int, int]]:
    """(id, size) of the copies to check, those checked longest ago first (never checked: first)."""
    last = _last_checked()
    q = _candidates([locations.c.id, locations.c.size_bytes], tiers, study_uid, checked_before)
    q = q.order_by(last.asc().nulls_first(), locations.c.id)
    if limit is not None:
        q = q.limit(limit)
    return [(int(r[0]), int(r[1])) for r in conn.execute(q)]


def candidate_totals(conn: Connection, *, tiers: Sequence[str], study_uid: str | None = None,
                     checked_before: datetime | None = None) -> tuple[int, int]:
    """How many copies there are to check, and their bytes."""
    row = conn.execute(_candidates([func.count(), func.coalesce(func.sum(locations.c.size_bytes), 0)],
                                   tiers, study_uid, checked_before)).one()
    return int(row[0]), int(row[1])


def candidate_page(conn: Connection, *, tiers: Sequence[str], study_uid: str | None = None,
                   checked_before: datetime | None = None, after_id: int = 0, limit: int = 256) -> list[int]:
    """The next ``limit`` copy ids above ``after_id`` (a full run pages through the
    catalog by id, holding one page in memory whatever the archive's size)."""
    q = _candidates([locations.c.id], tiers, study_uid, checked_before).where(locations.c.id > after_id)
    return [int(r[0]) for r in conn.execute(q.order_by(locations.c.id).limit(limit))]


def copies_by_ids(conn: Connection, ids: Sequence[int]) -> list[CopyToCheck]:
    """The copies with these ids (those still present), in the order given."""
    if not ids:
        return []
    rows = conn.execute(
        select(locations.c.id, instances.c.id, instances.c.sop_uid, studies.c.study_uid, locations.c.tier,
               locations.c.object_key, locations.c.size_bytes, locations.c.sha256, locations.c.state,
               locations.c.pack_offset, locations.c.pack_length)
        .join(instances, instances.c.id == locations.c.instance_pk)
        .join(studies, studies.c.id == instances.c.study_pk)
        .where(locations.c.id.in_(list(ids)))
    )
    by_id = {int(r[0]): CopyToCheck(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], int(r[6]), r[7], r[8],
                                    None if r[9] is None else int(r[9]), None if r[10] is None else int(r[10]))
             for r in rows}
    return [by_id[i] for i in ids if i in by_id]


def copy_on_tier(conn: Connection, sop_uid: str, tier: str) -> CopyToCheck | None:
    """The copy of an instance on ``tier`` (whole object or pack member), None when there is none."""
    r = conn.execute(select(locations.c.id).join(instances, instances.c.id == locations.c.instance_pk)
                     .where(instances.c.sop_uid == sop_uid, locations.c.tier == tier)).first()
    found = copies_by_ids(conn, [int(r[0])]) if r is not None else []
    return found[0] if found else None


def record_checks(conn: Connection, checked: Iterable[CheckedCopy], now: datetime) -> list[CheckedCopy]:
    """Write what the checks found; return the copies whose state changed: newly
    marked bad or missing, or marked before and good again (put back by hand).
    A copy already marked keeps its state and gets the newest reason."""
    ok: list[int] = []
    marked: list[dict[str, object]] = []
    newly: list[CheckedCopy] = []
    for c in checked:
        if c.state == CopyState.VERIFIED.value:
            ok.append(c.copy.location_id)
            if c.copy.state != CopyState.VERIFIED.value:
                newly.append(c)
        else:
            marked.append({"lid": c.copy.location_id, "st": c.state, "why": c.problem[:2000], "at": now})
            if c.copy.state == CopyState.VERIFIED.value:
                newly.append(c)
    if ok:
        conn.execute(update(locations).where(locations.c.id.in_(ok), locations.c.state.in_(CHECKED_STATES))
                     .values(state=CopyState.VERIFIED.value, verified_at=now, problem=None, problem_at=None))
    if marked:
        conn.execute(update(locations).where(locations.c.id == bindparam("lid"),  # no IN: executemany
                                             or_(*(locations.c.state == s for s in CHECKED_STATES)))
                     .values(state=bindparam("st"), problem=bindparam("why"), problem_at=bindparam("at")), marked)
    changed = [c.copy.instance_pk for c in checked if c.state != c.copy.state]
    if changed:
        refresh_study_tiers(conn, changed)
    return newly


def marked_copies(conn: Connection, sop_uid: str) -> list[CopyToCheck]:
    """The whole-object copies of an instance marked bad or missing."""
    ids = [int(r[0]) for r in conn.execute(
        select(locations.c.id).join(instances, instances.c.id == locations.c.instance_pk)
        .where(instances.c.sop_uid == sop_uid, locations.c.state.in_(_PROBLEM_STATES),
               locations.c.pack_offset.is_(None)))]
    return copies_by_ids(conn, ids)


def mark_repaired(conn: Connection, location_id: int, instance_pk: int, now: datetime) -> bool:
    """A marked copy now holds verified bytes again."""
    res = conn.execute(update(locations).where(locations.c.id == location_id, locations.c.state.in_(_PROBLEM_STATES))
                       .values(state=CopyState.VERIFIED.value, verified_at=now, problem=None, problem_at=None))
    refresh_study_tiers(conn, [instance_pk])
    return res.rowcount > 0


def repair_sources(conn: Connection, instance_pk: int, *, excluding_tier: str, online: Sequence[str]) -> list[RepairSource]:
    """Verified whole-object copies of an instance on other online tiers (packed copies
    are not a source: their bytes are a range of a pack), hottest tier order left to the caller."""
    rows = conn.execute(
        select(locations.c.tier, locations.c.object_key).where(
            locations.c.instance_pk == instance_pk, locations.c.tier != excluding_tier,
            locations.c.tier.in_(list(online)), locations.c.state == CopyState.VERIFIED.value,
            locations.c.pack_offset.is_(None))
    )
    return [RepairSource(r[0], r[1]) for r in rows]


def fixity_counts(conn: Connection, *, tiers: Sequence[str], checked_before: datetime) -> dict[str, int]:
    """Copies on ``tiers`` by state, and how many are due for a check."""
    out = {s: 0 for s in CHECKED_STATES}
    for st, n in conn.execute(select(locations.c.state, func.count()).where(locations.c.tier.in_(list(tiers)))
                              .group_by(locations.c.state)):
        out[st] = int(n)
    last = _last_checked()
    out["due"] = int(conn.execute(
        select(func.count()).select_from(locations).where(
            locations.c.tier.in_(list(tiers)), locations.c.state.in_(CHECKED_STATES),
            or_(last.is_(None), last < checked_before))
    ).scalar_one())
    return out


# -- replica copies (the ``replicas`` tier option) ---------------------------


@dataclass(frozen=True, slots=True)
class ReplicaTodo:
    """A verified copy on a tier with replicas that lacks its copy on ``replica``."""

    copy: InstanceCopy
    replica: str


def missing_replicas(conn: Connection, wanted: Mapping[str, Sequence[str]], *, study_uid: str | None = None,
                     limit: int = 1000) -> list[ReplicaTodo]:
    """Verified whole-object copies on a tier of ``wanted`` (tier -> its replica tiers)
    with no copy at all on one of its replica tiers."""
    out: list[ReplicaTodo] = []
    other = locations.alias()
    for tier, replicas in wanted.items():
        for replica in replicas:
            q = (
                select(instances.c.id, instances.c.sop_uid, instances.c.sha256, instances.c.size_bytes,
                       locations.c.object_key)
                .join(locations, locations.c.instance_pk == instances.c.id)
                .where(locations.c.tier == tier, locations.c.state == CopyState.VERIFIED.value,
                       locations.c.pack_offset.is_(None), locations.c.replica == false(),
                       ~select(other.c.id).where(and_(other.c.instance_pk == instances.c.id,
                                                      other.c.tier == replica)).exists())
                .order_by(instances.c.id).limit(max(0, limit - len(out)))
            )
            if study_uid is not None:
                q = q.join(studies, studies.c.id == instances.c.study_pk).where(studies.c.study_uid == study_uid)
            out += [ReplicaTodo(InstanceCopy(int(r[0]), r[1], r[2], int(r[3]), tier, r[4], CopyState.VERIFIED.value),
                                replica) for r in conn.execute(q)]
            if len(out) >= limit:
                return out
    return out


def add_replica(conn: Connection, sop_uid: str, tier: str, key: str, size: int, sha256: str,
                now: datetime) -> bool:
    """Record a verified replica copy of an instance (False when the instance is not
    catalogued, or has a copy on that tier already)."""
    pk = conn.execute(select(instances.c.id).where(instances.c.sop_uid == sop_uid)).scalar()
    if pk is None or conn.execute(select(locations.c.id).where(locations.c.instance_pk == pk,
                                                               locations.c.tier == tier)).first() is not None:
        return False
    conn.execute(locations.insert().values(
        instance_pk=pk, tier=tier, object_key=key, size_bytes=size, sha256=sha256,
        state=CopyState.VERIFIED.value, created_at=now, verified_at=now, replica=True))
    return True
