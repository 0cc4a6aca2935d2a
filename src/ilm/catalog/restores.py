"""Catalog side of restores from archive tiers (tape, Glacier).

A ``restores`` row is the request and its journal: requested -> restoring ->
ready -> expired (or failed). Restored copies are ordinary ``locations`` rows
on the target tier whose ``expires_at`` is set; they are dropped through the
state 'deleting' (row first marked, then the object deleted, then the row
removed), so that a crash never leaves an object the catalog does not know and
never lets a reader pick a copy that is being removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import and_, delete, exists, select, text, update
from sqlalchemy.engine import Connection

from ilm.catalog.copies import refresh_study_tiers
from ilm.catalog.schema import instances, locations, moves, restores, series, studies
from ilm.models import CopyState
from ilm.uids import instance_key

__all__ = [
    "RestoreRow",
    "RestoreItem",
    "ExpiringCopy",
    "ACTIVE_STATES",
    "lock_restores",
    "latest_restore",
    "list_restores",
    "insert_restore",
    "set_restore_state",
    "claim_restore",
    "renew_lease",
    "release_lease",
    "extend_restore",
    "due_restores",
    "restore_items",
    "record_restored",
    "target_rows",
    "moves_in_flight",
    "expiring_copies",
    "retire_copies",
    "drop_retired",
    "finish_expired_restores",
    "aware",
]

# A request that is not finished, or whose copies are still on the target tier.
ACTIVE_STATES = ("requested", "restoring", "ready")
_PENDING = ("requested", "restoring")
_LOCK_KEY = 0x11A0D18  # advisory lock id that serialises restore requests on PostgreSQL


def aware(t: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; ilm writes UTC only."""
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=timezone.utc)
    return t


@dataclass(frozen=True, slots=True)
class RestoreRow:
    id: int
    study_uid: str
    archive_tier: str
    target_tier: str
    state: str
    requested_by: str
    requested_at: datetime
    ready_at: datetime
    completed_at: datetime | None
    expires_at: datetime | None
    detail: str


def _row(r: object) -> RestoreRow:
    m = r._mapping  # type: ignore[attr-defined]
    return RestoreRow(
        id=int(m["id"]), study_uid=m["study_uid"], archive_tier=m["archive_tier"], target_tier=m["target_tier"],
        state=m["state"], requested_by=m["requested_by"], requested_at=aware(m["requested_at"]),  # type: ignore[arg-type]
        ready_at=aware(m["ready_at"]), completed_at=aware(m["completed_at"]),  # type: ignore[arg-type]
        expires_at=aware(m["expires_at"]), detail=m["detail"],
    )


def lock_restores(conn: Connection) -> None:
    """Serialise restore requests (so that duplicates coalesce) on PostgreSQL;
    SQLite writers are serialised already (BEGIN IMMEDIATE)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})


def latest_restore(conn: Connection, study_uid: str, states: Iterable[str] | None = None) -> RestoreRow | None:
    q = select(restores).where(restores.c.study_uid == study_uid)
    if states is not None:
        q = q.where(restores.c.state.in_(list(states)))
    r = conn.execute(q.order_by(restores.c.id.desc()).limit(1)).first()
    return _row(r) if r is not None else None


def list_restores(conn: Connection, states: Iterable[str] | None = None, study_uids: Iterable[str] | None = None,
                  limit: int = 1000) -> list[RestoreRow]:
    """Newest first."""
    q = select(restores)
    if states is not None:
        q = q.where(restores.c.state.in_(list(states)))
    if study_uids is not None:
        q = q.where(restores.c.study_uid.in_(list(study_uids)))
    return [_row(r) for r in conn.execute(q.order_by(restores.c.id.desc()).limit(limit))]


def insert_restore(conn: Connection, *, study_uid: str, archive_tier: str, target_tier: str, requested_by: str,
                   requested_at: datetime, ready_at: datetime) -> RestoreRow:
    rid = conn.execute(
        restores.insert().values(study_uid=study_uid, archive_tier=archive_tier, target_tier=target_tier,
                                 state="requested", requested_by=requested_by[:128], requested_at=requested_at,
                                 ready_at=ready_at, detail="")
        .returning(restores.c.id)
    ).scalar_one()
    return _row(conn.execute(select(restores).where(restores.c.id == rid)).one())


def set_restore_state(conn: Connection, restore_id: int, state: str, *, from_states: Iterable[str] | None = None,
                      completed_at: datetime | None = None, expires_at: datetime | None = None,
                      detail: str | None = None) -> bool:
    """Move a request to ``state`` (only from ``from_states`` when given); True if it changed."""
    values: dict[str, object] = {"state": state}
    if completed_at is not None:
        values["completed_at"] = completed_at
    if expires_at is not None:
        values["expires_at"] = expires_at
    if detail is not None:
        values["detail"] = detail
    q = update(restores).where(restores.c.id == restore_id)
    if from_states is not None:
        q = q.where(restores.c.state.in_(list(from_states)))
    return conn.execute(q.values(**values)).rowcount > 0


def claim_restore(conn: Connection, restore_id: int, owner: str, now: datetime, until: datetime,
                  owner_alive: Callable[[str], bool]) -> bool:
    """Take the lease of a due restore for ``owner`` until ``until`` and mark it 'restoring';
    False when it is not due any more or another worker's lease is live: not lapsed
    (``lease_until`` after ``now``) and its owner alive (``owner_alive``). A compare-and-set
    on the previous owner, so that of two workers claiming at once exactly one wins."""
    r = conn.execute(select(restores.c.state, restores.c.lease_owner, restores.c.lease_until)
                     .where(restores.c.id == restore_id)).first()
    if r is None or r.state not in _PENDING:
        return False
    held_until = aware(r.lease_until)
    if r.lease_owner and r.lease_owner != owner and held_until is not None and held_until > now \
            and owner_alive(r.lease_owner):
        return False
    q = (update(restores).where(restores.c.id == restore_id, restores.c.state.in_(_PENDING),
                                restores.c.lease_owner == r.lease_owner)
         .values(state="restoring", lease_owner=owner[:128], lease_until=until))
    return conn.execute(q).rowcount > 0


def renew_lease(conn: Connection, restore_id: int, owner: str, until: datetime) -> bool:
    """Extend ``owner``'s lease; False when it is not the owner any more (taken over)."""
    q = update(restores).where(restores.c.id == restore_id, restores.c.lease_owner == owner[:128])
    return conn.execute(q.values(lease_until=until)).rowcount > 0


def release_lease(conn: Connection, restore_id: int, owner: str) -> None:
    """Give the lease up (done, failed, or left for a later run)."""
    conn.execute(update(restores).where(restores.c.id == restore_id, restores.c.lease_owner == owner[:128])
                 .values(lease_owner="", lease_until=None))


def extend_restore(conn: Connection, row: RestoreRow, expires_at: datetime) -> None:
    """Keep a ready restore's copies longer (a new request for a restored study,
    as S3 does when a restore of a restored object is requested again)."""
    conn.execute(update(restores).where(restores.c.id == row.id).values(expires_at=expires_at))
    pks = select(instances.c.id).join(studies, studies.c.id == instances.c.study_pk) \
        .where(studies.c.study_uid == row.study_uid)
    conn.execute(
        update(locations)
        .where(locations.c.tier == row.target_tier, locations.c.expires_at.is_not(None),
               locations.c.state == CopyState.VERIFIED.value, locations.c.instance_pk.in_(pks))
        .values(expires_at=expires_at)
    )


def due_restores(conn: Connection, now: datetime) -> list[RestoreRow]:
    """Requests whose archive has released the data (ready_at passed) and that are not copied yet."""
    q = select(restores).where(restores.c.state.in_(_PENDING), restores.c.ready_at <= now).order_by(restores.c.id)
    return [_row(r) for r in conn.execute(q)]


@dataclass(frozen=True, slots=True)
class RestoreItem:
    """One instance to copy from an archive tier to the target tier."""

    instance_pk: int
    sop_uid: str
    sha256: str
    size: int
    tier: str  # the archive tier that holds it
    key: str  # its object there (the study's pack when packed)
    target_key: str  # the restored copy's object on the target tier
    pack_offset: int | None  # byte range inside the pack, when packed
    pack_length: int | None


def restore_items(conn: Connection, study_uid: str, archive_tiers: Iterable[str], target: str,
                  now: datetime) -> tuple[list[RestoreItem], int]:
    """The instances of an active study that have a verified copy on an archive
    tier and no copy on ``target`` still valid at ``now`` (one archive copy
    each), and the number of instances whose copy on ``target`` is busy (being
    dropped or written): those are left for a later run."""
    tiers = list(archive_tiers)
    rows = conn.execute(
        select(instances.c.id, instances.c.sop_uid, instances.c.sha256, instances.c.size_bytes,
               locations.c.tier, locations.c.object_key, locations.c.pack_offset, locations.c.pack_length,
               series.c.series_uid)
        .join(studies, studies.c.id == instances.c.study_pk)
        .join(series, series.c.id == instances.c.series_pk)
        .join(locations, locations.c.instance_pk == instances.c.id)
        .where(studies.c.study_uid == study_uid, studies.c.state == "active", locations.c.tier.in_(tiers),
               locations.c.state == CopyState.VERIFIED.value)
        .order_by(instances.c.id, locations.c.tier)
    ).all()
    on_target = {
        r[0]: (r[1], aware(r[2])) for r in conn.execute(
            select(locations.c.instance_pk, locations.c.state, locations.c.expires_at)
            .join(instances, instances.c.id == locations.c.instance_pk)
            .join(studies, studies.c.id == instances.c.study_pk)
            .where(studies.c.study_uid == study_uid, locations.c.tier == target))
    }
    items: dict[int, RestoreItem] = {}
    busy = 0
    for r in rows:
        pk = int(r[0])
        if pk in items:
            continue
        held = on_target.get(pk)
        if held is not None:
            state, expires = held
            if state == CopyState.VERIFIED.value and (expires is None or expires > now):
                continue  # readable there already
            busy += 1
            on_target.pop(pk)  # count once
            continue
        packed = r[6] is not None
        items[pk] = RestoreItem(pk, r[1], r[2], int(r[3]), r[4], r[5],
                                instance_key(study_uid, r[8], r[1]) if packed else r[5],
                                None if r[6] is None else int(r[6]), None if r[7] is None else int(r[7]))
    return list(items.values()), busy


def _insert_ignore(conn: Connection, values: list[dict[str, object]]) -> None:
    if not values:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(locations).on_conflict_do_nothing(), values)
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(locations).on_conflict_do_nothing(), values)
    else:  # pragma: no cover - other databases are not supported
        conn.execute(locations.insert(), values)


def record_restored(conn: Connection, done: list[tuple[RestoreItem, str, int]], target: str, now: datetime,
                    expires_at: datetime, lock: tuple[str, datetime] | None = None) -> None:
    """Catalogue verified restored copies on ``target``; a copy another worker
    recorded first is left as it is. ``done`` holds (item, sha256 the target
    vouched for, size); ``lock`` the (mode, retain-until) of copies on a WORM ``target``."""
    _insert_ignore(conn, [
        {"instance_pk": it.instance_pk, "tier": target, "object_key": it.target_key, "size_bytes": size,
         "sha256": sha, "state": CopyState.VERIFIED.value, "created_at": now, "verified_at": now,
         "expires_at": expires_at, "lock_mode": lock[0] if lock else None, "retain_until": lock[1] if lock else None}
        for it, sha, size in done
    ])
    if done:
        refresh_study_tiers(conn, [it.instance_pk for it, _s, _z in done])


def target_rows(conn: Connection, instance_pks: list[int], tier: str) -> set[int]:
    """Which of these instances have any row on ``tier``."""
    if not instance_pks:
        return set()
    return {int(r[0]) for r in conn.execute(
        select(locations.c.instance_pk).where(locations.c.tier == tier, locations.c.instance_pk.in_(instance_pks)))}


def moves_in_flight(conn: Connection, instance_pks: list[int], dst: str) -> set[int]:
    """Instances a move journal says are being copied to ``dst`` right now."""
    if not instance_pks:
        return set()
    return {int(r[0]) for r in conn.execute(
        select(moves.c.instance_pk).where(moves.c.dst_tier == dst, moves.c.state.in_(("copying", "committed")),
                                          moves.c.instance_pk.in_(instance_pks)))}


@dataclass(frozen=True, slots=True)
class ExpiringCopy:
    location_id: int
    instance_pk: int
    study_uid: str
    tier: str
    key: str
    state: str


def expiring_copies(conn: Connection, now: datetime) -> list[ExpiringCopy]:
    """Restored copies whose time is up, and copies left half-dropped by a crash.

    Found through the restores that are ready and past their expiry (the
    restores table is small and indexed by state), never by scanning locations.
    """
    due = conn.execute(
        select(restores.c.study_uid, restores.c.target_tier)
        .where(restores.c.state == "ready", restores.c.expires_at <= now).distinct()
    ).all()
    out: list[ExpiringCopy] = []
    for study_uid, tier in due:
        rows = conn.execute(
            select(locations.c.id, locations.c.instance_pk, locations.c.tier, locations.c.object_key,
                   locations.c.state)
            .join(instances, instances.c.id == locations.c.instance_pk)
            .join(studies, studies.c.id == instances.c.study_pk)
            .where(studies.c.study_uid == study_uid, locations.c.tier == tier, locations.c.expires_at.is_not(None),
                   (locations.c.expires_at <= now) | (locations.c.state == CopyState.DELETING.value))
            .order_by(locations.c.id)
        )
        out.extend(ExpiringCopy(int(r[0]), int(r[1]), study_uid, r[2], r[3], r[4]) for r in rows)
    return out


def retire_copies(conn: Connection, copies: list[ExpiringCopy]) -> tuple[list[ExpiringCopy], list[ExpiringCopy]]:
    """Mark expired restored copies 'deleting' (readers stop using them) when
    another verified copy of the instance exists; a copy that became the last
    verified one (its archive copy was moved or dropped meanwhile) is kept for
    good: its expiry is cleared. Returns (to delete, kept)."""
    other = locations.alias()
    to_delete: list[ExpiringCopy] = []
    kept: list[ExpiringCopy] = []
    for c in copies:
        if c.state == CopyState.DELETING.value:
            to_delete.append(c)
            continue
        res = conn.execute(
            update(locations)
            .where(locations.c.id == c.location_id, locations.c.state == CopyState.VERIFIED.value,
                   exists(select(other.c.id).where(and_(other.c.instance_pk == c.instance_pk, other.c.id != c.location_id,
                                                        other.c.tier != c.tier,
                                                        other.c.state == CopyState.VERIFIED.value,
                                                        other.c.expires_at.is_(None)))))
            .values(state=CopyState.DELETING.value)
        )
        if res.rowcount:
            to_delete.append(c)
        else:
            conn.execute(update(locations).where(locations.c.id == c.location_id,
                                                 locations.c.state == CopyState.VERIFIED.value)
                         .values(expires_at=None))
            kept.append(c)
    if to_delete or kept:
        refresh_study_tiers(conn, [c.instance_pk for c in to_delete + kept])
    return to_delete, kept


def drop_retired(conn: Connection, copies: list[ExpiringCopy]) -> None:
    """Remove the rows of dropped copies (their objects are gone)."""
    ids = [c.location_id for c in copies]
    if ids:
        conn.execute(delete(locations).where(locations.c.id.in_(ids), locations.c.state == CopyState.DELETING.value))
        refresh_study_tiers(conn, [c.instance_pk for c in copies])


def finish_expired_restores(conn: Connection, now: datetime) -> list[RestoreRow]:
    """Ready requests past their expiry whose copies are all gone from the target tier: 'expired'."""
    out = []
    for row in [_row(r) for r in conn.execute(
            select(restores).where(restores.c.state == "ready", restores.c.expires_at <= now))]:
        left = conn.execute(
            select(locations.c.id)
            .join(instances, instances.c.id == locations.c.instance_pk)
            .join(studies, studies.c.id == instances.c.study_pk)
            .where(studies.c.study_uid == row.study_uid, locations.c.tier == row.target_tier,
                   locations.c.expires_at.is_not(None), locations.c.expires_at <= now)
            .limit(1)
        ).first()
        if left is None and set_restore_state(conn, row.id, "expired", from_states=("ready",)):
            out.append(row)
    return out
