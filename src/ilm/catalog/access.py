"""Recording retrievals: the access log and each study's last access."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.engine import Connection

from ilm.catalog.schema import access_log, instances, locations, series, studies
from ilm.models import CopyState

__all__ = ["AccessRow", "record_accesses", "replay_access_log", "InstanceRef", "instance_refs"]


@dataclass(frozen=True, slots=True)
class AccessRow:
    at: datetime
    study_uid: str
    interface: str
    who: str
    instances: int


_TOUCH = (
    update(studies)
    .where(studies.c.study_uid == bindparam("uid"))
    .where(or_(studies.c.last_accessed_at.is_(None), studies.c.last_accessed_at < bindparam("at")))
    .values(last_accessed_at=bindparam("at"))
)


def record_accesses(conn: Connection, rows: list[AccessRow]) -> None:
    """Append to the access log and move each study's last access forward."""
    if not rows:
        return
    conn.execute(access_log.insert(), [
        {"at": r.at, "study_uid": r.study_uid, "interface": r.interface, "who": r.who[:128], "instances": r.instances}
        for r in rows
    ])
    newest: dict[str, datetime] = {}
    for r in rows:
        if r.study_uid not in newest or r.at > newest[r.study_uid]:
            newest[r.study_uid] = r.at
    conn.execute(_TOUCH, [{"uid": u, "at": at} for u, at in newest.items()])


def replay_access_log(conn: Connection, rows: list[AccessRow], chunk: int = 20_000) -> int:
    """Append an access history read elsewhere (a synthetic archive's reads) to the access
    log, once: nothing is written if rows of the same interface are already there."""
    if not rows:
        return 0
    kinds = sorted({r.interface for r in rows})
    if conn.execute(select(func.count()).select_from(access_log).where(access_log.c.interface.in_(kinds))).scalar_one():
        return 0
    for i in range(0, len(rows), chunk):
        record_accesses(conn, rows[i:i + chunk])
    return len(rows)


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """Where to read one instance: its hottest verified copy."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: str
    tier: str
    key: str
    # Inside a packed study object (ilm.storage.pack): the instance's byte range in ``key``.
    pack_offset: int | None = None
    pack_length: int | None = None
    # Set when the instance has no verified copy left (every copy marked bad or missing by a
    # fixity check or a read): why it cannot be read. Such an instance is still listed, so
    # that a retrieval reports it as failed instead of leaving it out unsaid.
    problem: str = ""


_READ_STATES = (CopyState.VERIFIED.value, CopyState.BAD.value, CopyState.MISSING.value)


def instance_refs(
    conn: Connection,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    tier_order: list[str] | None = None,
    now: datetime | None = None,
) -> list[InstanceRef]:
    """The instances of an active study (or of one series, or one instance), each
    with the verified copy on the hottest tier (``tier_order``, hottest first).
    With ``now``, restored copies of archived instances that expired by then
    are left out (a valid restored copy on a hotter tier is picked by the order).
    An instance with no verified copy left comes with a marked one and its ``problem``."""
    q = (
        select(studies.c.study_uid, series.c.series_uid, instances.c.sop_uid, instances.c.sop_class_uid,
               instances.c.transfer_syntax_uid, instances.c.size_bytes, instances.c.sha256,
               locations.c.tier, locations.c.object_key, series.c.number, instances.c.number,
               locations.c.pack_offset, locations.c.pack_length, locations.c.state, locations.c.problem)
        .join(instances, instances.c.study_pk == studies.c.id)
        .join(series, series.c.id == instances.c.series_pk)
        .join(locations, locations.c.instance_pk == instances.c.id)
        .where(studies.c.study_uid == study_uid, studies.c.state == "active",
               locations.c.state.in_(_READ_STATES))
    )
    if series_uid is not None:
        q = q.where(series.c.series_uid == series_uid)
    if sop_uid is not None:
        q = q.where(instances.c.sop_uid == sop_uid)
    if now is not None:
        q = q.where(or_(locations.c.expires_at.is_(None), locations.c.expires_at > now))
    rank = {t: i for i, t in enumerate(tier_order or [])}
    best: dict[str, tuple[int, InstanceRef, tuple[int, int]]] = {}
    for r in conn.execute(q):
        marked = r[13] != CopyState.VERIFIED.value
        problem = (f"no verified copy of {r[2]} left: the copy on tier {r[7]!r} is marked {r[13]}"
                   + (f" ({r[14]})" if r[14] else "") + " (ilm verify repairs it from another copy, if any)"
                   if marked else "")
        ref = InstanceRef(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], r[7], r[8],
                          None if r[11] is None else int(r[11]), None if r[12] is None else int(r[12]), problem)
        order = rank.get(ref.tier, len(rank)) + (len(rank) + 1 if marked else 0)  # any verified copy first
        if ref.sop_uid not in best or order < best[ref.sop_uid][0]:
            best[ref.sop_uid] = (order, ref, (r[9] or 0, r[10] or 0))
    return [v[1] for v in sorted(best.values(), key=lambda v: (v[1].series_uid, v[2][0], v[2][1], v[1].sop_uid))]
