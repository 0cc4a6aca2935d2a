"""Catalog side of packed studies and journaled copy drops.

A move that writes or reads a packed study object (``ilm.storage.pack``), and
the drop of a copy that is verified elsewhere (a watermark run on a cache
tier), are journaled in the ``moves`` table like any move, under states of
their own so that the per-object move code never mistakes a pack for an
instance:

    pack_copying  the destination object (``object_key``: a pack, or the
                  instance's own key when unpacking) is being written;
                  recovery deletes it unless a location points at it, and
                  marks the move rolled back.
    dropping      the source copy is marked 'deleting' and a verified copy is
                  on ``dst_tier``; recovery deletes the source object (a pack
                  only once every location into it is 'deleting') and drops
                  the row, never an instance's last verified copy.

    repacked      a pack rewritten by a fixity repair (``ilm.catalog.repack``):
                  ``object_key`` names the old pack, which recovery deletes
                  once no location points into it.

Then ``done`` or ``rolled_back`` like every move.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, false, func, select, update
from sqlalchemy.engine import Connection

from ilm.catalog.copies import drop_location, refresh_study_tiers
from ilm.catalog.schema import instances, locations, moves, series, studies
from ilm.models import CopyState

__all__ = [
    "DROPPING",
    "PACK_COPYING",
    "REPACKED",
    "DropSource",
    "PackCopy",
    "PendingPackMove",
    "commit_pack_moves",
    "drop_sources",
    "end_pack_moves",
    "finish_drops",
    "has_packed_copy",
    "live_references",
    "mark_drops",
    "pending_pack_moves",
    "references",
    "start_pack_moves",
    "study_pack_copies",
]

PACK_COPYING = "pack_copying"
DROPPING = "dropping"
REPACKED = "repacked"  # a pack rewritten by a fixity repair: object_key is the old pack (ilm.catalog.repack)


@dataclass(frozen=True, slots=True)
class PackCopy:
    """One copy of an instance, with its byte range when it is inside a pack."""

    instance_pk: int
    sop_uid: str
    series_uid: str
    sha256: str
    size: int
    tier: str
    key: str
    state: str
    pack_offset: int | None = None
    pack_length: int | None = None

    @property
    def packed(self) -> bool:
        return self.pack_offset is not None


def study_pack_copies(conn: Connection, study_uid: str, *, replicas: bool = True) -> list[PackCopy]:
    """Every copy of every instance of a study, with pack ranges (``replicas=False``:
    not the copies on replica tiers, which moves leave alone)."""
    q = (
        select(instances.c.id, instances.c.sop_uid, series.c.series_uid, instances.c.sha256, instances.c.size_bytes,
               locations.c.tier, locations.c.object_key, locations.c.state, locations.c.pack_offset,
               locations.c.pack_length)
        .join(locations, locations.c.instance_pk == instances.c.id)
        .join(series, series.c.id == instances.c.series_pk)
        .join(studies, studies.c.id == instances.c.study_pk)
        .where(studies.c.study_uid == study_uid)
        .order_by(instances.c.id, locations.c.tier)
    )
    rows = conn.execute(q if replicas else q.where(locations.c.replica == false()))
    return [PackCopy(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], r[6], r[7],
                     None if r[8] is None else int(r[8]), None if r[9] is None else int(r[9])) for r in rows]


def has_packed_copy(conn: Connection, study_uid: str) -> bool:
    """Whether any copy of the study lies inside a pack."""
    return conn.execute(
        select(locations.c.id)
        .join(instances, instances.c.id == locations.c.instance_pk)
        .join(studies, studies.c.id == instances.c.study_pk)
        .where(studies.c.study_uid == study_uid, locations.c.pack_offset.is_not(None))
        .limit(1)
    ).first() is not None


def start_pack_moves(conn: Connection, items: list[tuple[PackCopy, str]], dst: str, plan_id: str | None,
                     now: datetime) -> list[int]:
    """Journal (source copy, destination key) pairs as 'pack_copying'; return their ids in order."""
    ids = []
    for c, dst_key in items:
        ids.append(int(conn.execute(
            moves.insert().values(plan_id=plan_id, instance_pk=c.instance_pk, src_tier=c.tier, dst_tier=dst,
                                  object_key=dst_key, state=PACK_COPYING, started_at=now, updated_at=now)
            .returning(moves.c.id)
        ).scalar_one()))
    return ids


def commit_pack_moves(conn: Connection, done: list[tuple[int, PackCopy, str, int | None, int | None]], dst: str,
                      now: datetime) -> None:
    """Record the new copies on ``dst`` and mark their sources for deletion, in one transaction.

    ``done`` holds (move id, source copy, destination key, pack offset, pack length).
    """
    for move_id, c, key, offset, length in done:
        conn.execute(locations.insert().values(
            instance_pk=c.instance_pk, tier=dst, object_key=key, size_bytes=c.size, sha256=c.sha256,
            state=CopyState.VERIFIED.value, created_at=now, verified_at=now, pack_offset=offset, pack_length=length))
        conn.execute(update(locations).where(locations.c.instance_pk == c.instance_pk, locations.c.tier == c.tier)
                     .values(state=CopyState.DELETING.value))
        conn.execute(update(moves).where(moves.c.id == move_id).values(state=DROPPING, updated_at=now))
    if done:
        refresh_study_tiers(conn, [d[1].instance_pk for d in done])


def references(conn: Connection, tier: str, key: str) -> int:
    """How many locations (in any state) point at or into the object ``key`` on ``tier``."""
    return int(conn.execute(
        select(func.count()).select_from(locations).where(locations.c.tier == tier, locations.c.object_key == key)
    ).scalar_one())


@dataclass(frozen=True, slots=True)
class PendingPackMove:
    id: int
    instance_pk: int
    src_tier: str
    dst_tier: str
    key: str  # the destination object
    state: str


def pending_pack_moves(conn: Connection) -> list[PendingPackMove]:
    rows = conn.execute(
        select(moves.c.id, moves.c.instance_pk, moves.c.src_tier, moves.c.dst_tier, moves.c.object_key, moves.c.state)
        .where(moves.c.state.in_((PACK_COPYING, DROPPING, REPACKED)))
        .order_by(moves.c.id)
    )
    return [PendingPackMove(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5]) for r in rows]


def live_references(conn: Connection, tier: str, key: str) -> int:
    """Locations pointing at or into ``key`` on ``tier`` that are not being deleted."""
    return int(conn.execute(
        select(func.count()).select_from(locations)
        .where(locations.c.tier == tier, locations.c.object_key == key,
               locations.c.state != CopyState.DELETING.value)
    ).scalar_one())


@dataclass(frozen=True, slots=True)
class DropSource:
    """A journaled drop: the source copy still in the catalog (None when its row is gone)."""

    move_id: int
    instance_pk: int
    tier: str
    key: str | None
    packed: bool
    state: str | None


def drop_sources(conn: Connection, move_ids: list[int]) -> list[DropSource]:
    """The source copies of journal rows in state 'dropping'."""
    out = []
    for i in range(0, len(move_ids), 500):
        chunk = move_ids[i:i + 500]
        rows = conn.execute(
            select(moves.c.id, moves.c.instance_pk, moves.c.src_tier, locations.c.object_key,
                   locations.c.pack_offset, locations.c.state)
            .outerjoin(locations, (locations.c.instance_pk == moves.c.instance_pk)
                       & (locations.c.tier == moves.c.src_tier))
            .where(moves.c.id.in_(chunk), moves.c.state == DROPPING)
            .order_by(moves.c.id)
        )
        out += [DropSource(int(r[0]), int(r[1]), r[2], r[3], r[4] is not None, r[5]) for r in rows]
    return out


def mark_drops(conn: Connection, items: list[tuple[PackCopy, str]], plan_id: str | None, now: datetime) -> list[int]:
    """Journal the drop of verified copies, each paired with the tier that holds
    another verified copy of its instance, and mark them 'deleting'. A copy with
    no verified copy on another tier is left alone (not journaled). Returns the
    journal ids of the copies marked."""
    other = locations.alias()
    ids = []
    for c, elsewhere in items:
        res = conn.execute(
            update(locations)
            .where(locations.c.instance_pk == c.instance_pk, locations.c.tier == c.tier,
                   locations.c.state == CopyState.VERIFIED.value,
                   exists(select(other.c.id).where(and_(other.c.instance_pk == c.instance_pk, other.c.tier != c.tier,
                                                        other.c.state == CopyState.VERIFIED.value))))
            .values(state=CopyState.DELETING.value)
        )
        if res.rowcount != 1:
            continue
        ids.append(int(conn.execute(
            moves.insert().values(plan_id=plan_id, instance_pk=c.instance_pk, src_tier=c.tier, dst_tier=elsewhere,
                                  object_key=c.key, state=DROPPING, started_at=now, updated_at=now)
            .returning(moves.c.id)
        ).scalar_one()))
    if ids:
        refresh_study_tiers(conn, [c.instance_pk for c, _e in items])
    return ids


def finish_drops(conn: Connection, items: list[tuple[int, int, str]], now: datetime) -> None:
    """After the source objects were deleted: drop their rows (never an instance's
    last verified copy) and close the journal. ``items``: (move id, instance pk, source tier)."""
    for _m, instance_pk, tier in items:
        drop_location(conn, instance_pk, tier)
    if items:
        refresh_study_tiers(conn, [i[1] for i in items])
        end_pack_moves(conn, [i[0] for i in items], "done", now)


def end_pack_moves(conn: Connection, move_ids: list[int], state: str, now: datetime) -> None:
    """Close journal rows as 'done' or 'rolled_back'."""
    if move_ids:
        conn.execute(update(moves).where(moves.c.id.in_(move_ids)).values(state=state, updated_at=now))
