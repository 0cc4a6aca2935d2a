"""Catalog side of moving copies between tiers: the move journal and locations.

The journal row is written before the first byte is copied, so that after a
crash ``pending_moves`` names every move that may have left something behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, false, select, update
from sqlalchemy.engine import Connection

from ilm.catalog.schema import instances, locations, moves, studies
from ilm.models import CopyState

__all__ = [
    "InstanceCopy",
    "study_copies",
    "start_moves",
    "commit_moves",
    "finish_moves",
    "rollback_moves",
    "pending_moves",
    "PendingMove",
    "verified_copy_count",
    "drop_location",
    "instance_copies",
    "refresh_study_tiers",
]


@dataclass(frozen=True, slots=True)
class InstanceCopy:
    instance_pk: int
    sop_uid: str
    sha256: str
    size: int
    tier: str
    key: str
    state: str


def study_copies(conn: Connection, study_uid: str, *, replicas: bool = True) -> list[InstanceCopy]:
    """Every copy of every instance of a study (``replicas=False``: not the copies
    on replica tiers, which moves leave alone)."""
    q = (
        select(instances.c.id, instances.c.sop_uid, instances.c.sha256, instances.c.size_bytes,
               locations.c.tier, locations.c.object_key, locations.c.state)
        .join(locations, locations.c.instance_pk == instances.c.id)
        .join(studies, studies.c.id == instances.c.study_pk)
        .where(studies.c.study_uid == study_uid)
        .order_by(instances.c.id, locations.c.tier)
    )
    rows = conn.execute(q if replicas else q.where(locations.c.replica == false()))
    return [InstanceCopy(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6]) for r in rows]


def start_moves(conn: Connection, items: list[InstanceCopy], dst: str, plan_id: str | None, now: datetime) -> list[int]:
    """Journal a batch of moves as 'copying'; return their ids in order."""
    if not items:
        return []
    rows = conn.execute(
        moves.insert().returning(moves.c.id, sort_by_parameter_order=True),
        [dict(plan_id=plan_id, instance_pk=c.instance_pk, src_tier=c.tier, dst_tier=dst, object_key=c.key,
              state="copying", started_at=now, updated_at=now) for c in items],
    )
    return [int(r[0]) for r in rows]


_MARK_SOURCE = (
    update(locations)
    .where(locations.c.instance_pk == bindparam("ipk"), locations.c.tier == bindparam("src"))
    .values(state=CopyState.DELETING.value)
)


def commit_moves(conn: Connection, done: list[tuple[int, InstanceCopy, str, int]], dst: str, now: datetime,
                 lock: tuple[str, datetime] | None = None) -> None:
    """Record verified copies on ``dst`` and mark their sources for deletion.

    ``done`` holds (move id, source copy, sha256 the destination vouched for, size);
    ``lock`` the (mode, retain-until) of copies on a WORM ``dst``.
    """
    if not done:
        return
    conn.execute(locations.insert(), [
        dict(instance_pk=c.instance_pk, tier=dst, object_key=c.key, size_bytes=size, sha256=c.sha256,
             state=CopyState.VERIFIED.value, created_at=now, verified_at=now,
             lock_mode=lock[0] if lock else None, retain_until=lock[1] if lock else None)
        for _m, c, _sha, size in done
    ])
    conn.execute(_MARK_SOURCE, [{"ipk": c.instance_pk, "src": c.tier} for _m, c, _s, _z in done])
    conn.execute(update(moves).where(moves.c.id.in_([m for m, *_ in done])).values(state="committed", updated_at=now))
    refresh_study_tiers(conn, [d[1].instance_pk for d in done])


def verified_copy_count(conn: Connection, instance_pk: int, excluding_tier: str | None = None) -> int:
    q = select(locations.c.id).where(locations.c.instance_pk == instance_pk, locations.c.state == CopyState.VERIFIED.value)
    if excluding_tier:
        q = q.where(locations.c.tier != excluding_tier)
    return len(conn.execute(q).all())


def drop_location(conn: Connection, instance_pk: int, tier: str) -> bool:
    """Remove a copy's row, but never the last verified copy of an instance."""
    other = locations.alias()
    res = conn.execute(
        delete(locations).where(
            locations.c.instance_pk == instance_pk,
            locations.c.tier == tier,
            exists(select(other.c.id).where(and_(other.c.instance_pk == instance_pk, other.c.tier != tier,
                                                 other.c.state == CopyState.VERIFIED.value))),
        )
    )
    return res.rowcount > 0


def refresh_study_tiers(conn: Connection, instance_pks: list[int]) -> None:
    """Recompute studies.tiers for the studies of these instances."""
    study_pks = {r[0] for r in conn.execute(select(instances.c.study_pk).where(instances.c.id.in_(instance_pks)))}
    for pk in study_pks:
        tiers = sorted({r[0] for r in conn.execute(
            select(locations.c.tier).join(instances, instances.c.id == locations.c.instance_pk)
            .where(instances.c.study_pk == pk, locations.c.state == CopyState.VERIFIED.value,
                   locations.c.replica == false()).distinct())})
        conn.execute(update(studies).where(studies.c.id == pk).values(tiers="\\".join(tiers)))


def _drop_stmt() -> Any:
    other = locations.alias()
    return delete(locations).where(
        locations.c.instance_pk == bindparam("ipk"),
        locations.c.tier == bindparam("src"),
        exists(select(other.c.id).where(and_(other.c.instance_pk == bindparam("ipk"), other.c.tier != bindparam("src"),
                                             other.c.state == CopyState.VERIFIED.value))),
    )


_DROP = _drop_stmt()


def finish_moves(conn: Connection, items: list[tuple[int, int, str]], now: datetime) -> None:
    """After the sources were deleted: drop their rows (never an instance's last
    verified copy) and close the journal. ``items`` holds (move id, instance pk, source tier)."""
    if not items:
        return
    conn.execute(_DROP, [{"ipk": ipk, "src": src} for _m, ipk, src in items])
    conn.execute(update(moves).where(moves.c.id.in_([m for m, _i, _s in items])).values(state="done", updated_at=now))
    refresh_study_tiers(conn, [i[1] for i in items])


def rollback_moves(conn: Connection, move_ids: list[int], now: datetime) -> None:
    if move_ids:
        conn.execute(update(moves).where(moves.c.id.in_(move_ids)).values(state="rolled_back", updated_at=now))


@dataclass(frozen=True, slots=True)
class PendingMove:
    id: int
    plan_id: str | None
    instance_pk: int
    src_tier: str
    dst_tier: str
    key: str
    state: str
    sha256: str


def pending_moves(conn: Connection) -> list[PendingMove]:
    rows = conn.execute(
        select(moves.c.id, moves.c.plan_id, moves.c.instance_pk, moves.c.src_tier, moves.c.dst_tier,
               moves.c.object_key, moves.c.state, instances.c.sha256)
        .join(instances, instances.c.id == moves.c.instance_pk)
        .where(moves.c.state.in_(("copying", "committed")))
        .order_by(moves.c.id)
    )
    return [PendingMove(*r) for r in rows]


def instance_copies(conn: Connection, instance_pk: int) -> list[InstanceCopy]:
    rows = conn.execute(
        select(instances.c.id, instances.c.sop_uid, instances.c.sha256, instances.c.size_bytes,
               locations.c.tier, locations.c.object_key, locations.c.state)
        .join(locations, locations.c.instance_pk == instances.c.id)
        .where(instances.c.id == instance_pk)
    )
    return [InstanceCopy(r[0], r[1], r[2], int(r[3]), r[4], r[5], r[6]) for r in rows]
