"""Catalog side of repairing a packed study object by writing a new pack (``ilm.fixity.repack``).

The repair is journaled in ``moves`` like a pack move (``ilm.catalog.packs``),
with source and destination the same tier:

    pack_copying  the new pack (``object_key``) is being written; recovery deletes
                  it unless a location points into it (the switch never happened)
    repacked      the members point into the new pack; ``object_key`` names the old
                  pack, which recovery deletes once no location points into it

then ``done`` or ``rolled_back``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from ilm.catalog.copies import refresh_study_tiers
from ilm.catalog.fixity import CHECKED_STATES
from ilm.catalog.packs import REPACKED
from ilm.catalog.schema import instances, locations, moves, series, studies
from ilm.errors import IlmError
from ilm.models import CopyState

__all__ = ["REPACKED", "PackedCopy", "StaleRepack", "pack_members", "switch_pack"]


class StaleRepack(IlmError):
    """The pack's members changed while a new pack was written (another repair, a move): nothing switched."""


@dataclass(frozen=True, slots=True)
class PackedCopy:
    """One instance's copy inside a pack, in a state a fixity check gives (verified, bad, missing)."""

    location_id: int
    instance_pk: int
    study_uid: str
    series_uid: str
    sop_uid: str
    sha256: str
    size: int
    state: str
    pack_offset: int
    pack_length: int


def pack_members(conn: Connection, tier: str, key: str) -> list[PackedCopy]:
    """The copies inside the pack ``key`` on ``tier`` that are checked or marked (not being deleted)."""
    rows = conn.execute(
        select(locations.c.id, instances.c.id, studies.c.study_uid, series.c.series_uid, instances.c.sop_uid,
               instances.c.sha256, instances.c.size_bytes, locations.c.state, locations.c.pack_offset,
               locations.c.pack_length)
        .join(instances, instances.c.id == locations.c.instance_pk)
        .join(series, series.c.id == instances.c.series_pk)
        .join(studies, studies.c.id == instances.c.study_pk)
        .where(locations.c.tier == tier, locations.c.object_key == key, locations.c.state.in_(CHECKED_STATES),
               locations.c.pack_offset.is_not(None))
        .order_by(locations.c.pack_offset)
    )
    return [PackedCopy(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], int(r[6]), r[7], int(r[8]), int(r[9]))
            for r in rows]


def switch_pack(conn: Connection, old_key: str, new_key: str, taken: list[tuple[int, PackedCopy, int, int]],
                now: datetime) -> None:
    """Point every member in ``taken`` (move id, copy, offset, length in the new pack) into ``new_key``,
    verified, and turn their journal rows to 'repacked' (naming the old pack), in the caller's
    transaction. StaleRepack, so that the transaction is rolled back, when a member no longer points
    into ``old_key`` in the state it was read in."""
    for move_id, c, offset, length in taken:
        res = conn.execute(
            update(locations)
            .where(locations.c.id == c.location_id, locations.c.object_key == old_key,
                   locations.c.state == c.state, locations.c.pack_offset == c.pack_offset)
            .values(object_key=new_key, pack_offset=offset, pack_length=length, state=CopyState.VERIFIED.value,
                    verified_at=now, problem=None, problem_at=None)
        )
        if res.rowcount != 1:
            raise StaleRepack(f"{c.sop_uid}: its copy changed while the pack was being rewritten; nothing switched")
        conn.execute(update(moves).where(moves.c.id == move_id)
                     .values(state=REPACKED, object_key=old_key, updated_at=now))
    if taken:
        refresh_study_tiers(conn, [t[1].instance_pk for t in taken])
