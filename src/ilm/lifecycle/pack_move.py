"""Moves that write or read packed study objects, and journaled copy drops.

``move_study`` hands a study over to :func:`move_study_packed` when the
destination tier packs studies (``pack_studies = true``) or a copy of the
study lies inside a pack. The same never-lose-an-image order holds:

packing (destination packs)
    journal every instance as 'pack_copying' with the new pack's key -> read
    each source (checked against its catalog SHA-256) -> build one ZIP of the
    study (``ilm.storage.pack``) -> put it with its SHA-256 and verify what the
    tier holds -> commit, in one transaction, a location per instance pointing
    into the pack (offset, length) and mark the sources 'deleting' (journal:
    'dropping') -> delete the sources -> drop their rows.

unpacking (a source is packed, the destination is not)
    the same per instance, under the instance's own key; the source is read
    with one ranged read per instance, or one read of the whole pack when most
    of it is needed.

A source pack is deleted only once every location pointing into it is being
deleted, so instances that stay in it (a failed copy, a partial move) keep
their bytes. Recovery (:func:`recover_pack_moves`, called by
``recover_moves``) rolls back 'pack_copying' rows (deleting the destination
object unless a location points at it: no orphan pack), finishes
'dropping' rows, and deletes the old packs of 'repacked' rows (a pack that
a fixity repair rewrote, ``ilm.fixity.repack``) once nothing points into them.

:func:`drop_study_copies` drops the copies of a study on one tier whose
instances are verified on another tier (a cache tier under a watermark),
through the same 'dropping' journal.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ilm.catalog import Catalog
from ilm.catalog.packs import (
    DROPPING,
    PACK_COPYING,
    REPACKED,
    PackCopy,
    PendingPackMove,
    commit_pack_moves,
    drop_sources,
    end_pack_moves,
    finish_drops,
    has_packed_copy,
    live_references,
    mark_drops,
    pending_pack_moves,
    references,
    start_pack_moves,
    study_pack_copies,
)
from ilm.catalog.locks import retain_sources
from ilm.errors import IntegrityError, ObjectLocked, StorageError
from ilm.lifecycle.limits import RateLimiter
from ilm.models import CopyState
from ilm.storage import ObjectExists, Tier
from ilm.storage.pack import PackMember, build_pack, pack_key
from ilm.uids import instance_key

if TYPE_CHECKING:
    from ilm.lifecycle.move import MoveResult

__all__ = [
    "DropResult",
    "drop_study_copies",
    "involves_packs",
    "move_study_packed",
    "packs_studies",
    "recover_pack_moves",
]

BATCH = 128


def _now() -> datetime:
    return datetime.now(UTC)


def packs_studies(tier: Tier) -> bool:
    """Whether the tier stores a whole study as one object (set by ``open_tier`` from ``pack_studies``)."""
    return bool(getattr(tier, "pack_studies", False))


def involves_packs(catalog: Catalog, study_uid: str, dst: Tier) -> bool:
    if packs_studies(dst):
        return True
    with catalog.read() as conn:
        return has_packed_copy(conn, study_uid)


# -- reading sources ------------------------------------------------------------------


def _read_sources(catalog: Catalog, tiers: Callable[[str], Tier], items: list[PackCopy], limiter: RateLimiter,
                  workers: int) -> dict[int, bytes | StorageError]:
    """The bytes of each source copy (by instance pk), checked against the catalog's SHA-256."""
    out: dict[int, bytes | StorageError] = {}
    plain = [c for c in items if not c.packed]
    by_pack: dict[tuple[str, str], list[PackCopy]] = defaultdict(list)
    for c in items:
        if c.packed:
            by_pack[(c.tier, c.key)].append(c)

    def check(c: PackCopy, data: bytes) -> bytes:
        if hashlib.sha256(data).hexdigest() != c.sha256:
            raise IntegrityError(f"tier {c.tier!r}: {c.sop_uid} in {c.key} does not match its catalog SHA-256; not moved")
        return data

    def read_plain(c: PackCopy) -> bytes:
        data = tiers(c.tier).get(c.key)
        limiter.take(len(data))
        return check(c, data)

    def read_pack(group: list[PackCopy]) -> dict[int, bytes | StorageError]:
        tier, key = group[0].tier, group[0].key
        with catalog.read() as conn:
            total = references(conn, tier, key)
        res: dict[int, bytes | StorageError] = {}
        if 2 * len(group) >= total:  # most of the pack: one request for all of it
            try:
                whole = tiers(tier).get(key)
            except StorageError as exc:
                return {c.instance_pk: exc for c in group}
            limiter.take(len(whole))
            for c in group:
                assert c.pack_offset is not None and c.pack_length is not None
                try:
                    res[c.instance_pk] = check(c, whole[c.pack_offset:c.pack_offset + c.pack_length])
                except StorageError as exc:
                    res[c.instance_pk] = exc
            return res
        for c in group:
            assert c.pack_offset is not None and c.pack_length is not None
            try:
                data = tiers(tier).get_range(key, c.pack_offset, c.pack_length)
                limiter.take(len(data))
                res[c.instance_pk] = check(c, data)
            except StorageError as exc:
                res[c.instance_pk] = exc
        return res

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {c.instance_pk: pool.submit(read_plain, c) for c in plain}
        packs = [pool.submit(read_pack, g) for g in by_pack.values()]
        for pk, fut in futures.items():
            try:
                out[pk] = fut.result()
            except StorageError as exc:
                out[pk] = exc
        for f in packs:
            out.update(f.result())
    return out


# -- finishing drops (normal path and recovery) ------------------------------------------


def _finish(catalog: Catalog, tiers: Callable[[str], Tier], move_ids: list[int], problems: list[str]) -> int:
    """Delete the sources of journal rows in 'dropping' and drop their rows; return how many finished."""
    if not move_ids:
        return 0
    with catalog.read() as conn:
        sources = drop_sources(conn, move_ids)
    finished: list[tuple[int, int, str]] = []
    kept: list[tuple[int, int, str]] = []  # a WORM source: kept as retained until its date (ilm.lifecycle.worm)
    gone: list[int] = []
    undone: list[int] = []
    packs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for s in sources:
        if s.key is None:
            gone.append(s.move_id)  # the row is gone already: nothing left to do
        elif s.state != CopyState.DELETING.value:
            undone.append(s.move_id)  # not ours to delete (never marked): leave the copy
        elif s.packed:
            packs[(s.tier, s.key)].append(s.move_id)
        else:
            try:
                tiers(s.tier).delete(s.key)
                finished.append((s.move_id, s.instance_pk, s.tier))
            except ObjectLocked:
                kept.append((s.move_id, s.instance_pk, s.tier))
            except StorageError as exc:
                problems.append(f"move {s.move_id}: cannot delete {s.tier}:{s.key}: {exc}")
    by_id = {s.move_id: s for s in sources}
    for (tier, key), ids in packs.items():
        with catalog.read() as conn:
            live = live_references(conn, tier, key)
        try:
            if live == 0:  # every location into the pack is being deleted: the pack goes
                tiers(tier).delete(key)
            finished += [(i, by_id[i].instance_pk, tier) for i in ids]
        except StorageError as exc:
            problems.append(f"moves {ids[0]}..: cannot delete pack {tier}:{key}: {exc}")
    with catalog.write() as conn:
        finish_drops(conn, finished, _now())
        retain_sources(conn, kept, _now())
        end_pack_moves(conn, gone, "done", _now())
        end_pack_moves(conn, undone, "rolled_back", _now())
    return len(finished) + len(kept) + len(gone)


# -- moving ---------------------------------------------------------------------------


def move_study_packed(
    catalog: Catalog,
    tiers: Callable[[str], Tier],
    study_uid: str,
    dst_name: str,
    *,
    plan_id: str | None = None,
    workers: int = 4,
    limiter: RateLimiter | None = None,
    progress: Callable[[int], None] | None = None,
) -> MoveResult:
    """``move_study`` for a study whose destination packs or whose copies are packed."""
    from ilm.lifecycle.move import MoveResult

    limiter = limiter or RateLimiter(0)
    result = MoveResult(study_uid, dst_name)
    dst = tiers(dst_name)
    with catalog.read() as conn:
        copies = study_pack_copies(conn, study_uid, replicas=False)  # replica copies stay (fixity)
    verified = [c for c in copies if c.state == CopyState.VERIFIED.value]
    on_dst = {c.instance_pk: c for c in verified if c.tier == dst_name}
    todo: dict[int, PackCopy] = {}
    stale: list[tuple[PackCopy, str]] = []
    for c in verified:
        if c.tier == dst_name:
            continue
        if c.instance_pk in on_dst:
            stale.append((c, dst_name))
        else:
            todo.setdefault(c.instance_pk, c)
    problems: list[str] = []
    if stale:  # copies left on other tiers by an earlier move that got as far as commit
        with catalog.write() as conn:
            ids = mark_drops(conn, stale, plan_id, _now())
        result.already_there += _finish(catalog, tiers, ids, problems)
    items = list(todo.values())
    if items and packs_studies(dst):
        _pack(catalog, tiers, study_uid, dst, items, plan_id, workers, limiter, result, problems)
        if progress:
            progress(len(items))
    else:
        for i in range(0, len(items), BATCH):
            _unpack(catalog, tiers, study_uid, dst, items[i:i + BATCH], plan_id, workers, limiter, result, problems)
            if progress:
                progress(len(items[i:i + BATCH]))
    result.failed += [f"{study_uid}: moved, but a source copy is not deleted yet: {p}" for p in problems]
    return result


def _pack(catalog: Catalog, tiers: Callable[[str], Tier], study_uid: str, dst: Tier, items: list[PackCopy],
          plan_id: str | None, workers: int, limiter: RateLimiter, result: MoveResult, problems: list[str]) -> None:
    key = pack_key(study_uid)
    with catalog.write() as conn:
        ids = start_pack_moves(conn, [(c, key) for c in items], dst.name, plan_id, _now())
    datas = _read_sources(catalog, tiers, items, limiter, workers)
    good = [(mid, c) for mid, c in zip(ids, items) if isinstance(datas[c.instance_pk], bytes)]
    bad = [mid for mid, c in zip(ids, items) if not isinstance(datas[c.instance_pk], bytes)]
    for c in items:
        d = datas[c.instance_pk]
        if isinstance(d, StorageError):
            result.failed.append(f"{c.sop_uid}: {d}")
    if bad:  # these stay where they are; the pack (if any) is made of the others
        with catalog.write() as conn:
            end_pack_moves(conn, bad, "rolled_back", _now())
    if not good:
        return
    members = []
    for _mid, c in good:
        d = datas[c.instance_pk]
        assert isinstance(d, bytes)
        members.append(PackMember(c.sop_uid, c.series_uid, d))
    datas.clear()
    pack = build_pack(study_uid, members)
    del members
    try:
        try:
            dst.put(key, pack.data, pack.sha256)
        except ObjectExists:
            pass  # cannot happen for a fresh key unless a retried put landed: verified below
        held = dst.stat(key)
        if held.sha256 != pack.sha256 or held.size != len(pack.data):
            raise IntegrityError(f"tier {dst.name!r}: pack {key} holds other bytes than were written")
    except StorageError as exc:
        result.failed += [f"{c.sop_uid}: {exc}" for _m, c in good]
        try:
            dst.delete(key)
        except StorageError:
            return  # the journal keeps 'pack_copying': recovery deletes the pack
        with catalog.write() as conn:
            end_pack_moves(conn, [m for m, _c in good], "rolled_back", _now())
        return
    entries = {e.sop_uid: e for e in pack.entries}
    with catalog.write() as conn:
        commit_pack_moves(conn, [(mid, c, key, entries[c.sop_uid].offset, entries[c.sop_uid].length)
                                 for mid, c in good], dst.name, _now())
    result.moved += len(good)
    result.bytes_moved += sum(c.size for _m, c in good)
    _finish(catalog, tiers, [m for m, _c in good], problems)


def _unpack(catalog: Catalog, tiers: Callable[[str], Tier], study_uid: str, dst: Tier, items: list[PackCopy],
            plan_id: str | None, workers: int, limiter: RateLimiter, result: MoveResult, problems: list[str]) -> None:
    keys = {c.instance_pk: instance_key(study_uid, c.series_uid, c.sop_uid) for c in items}
    with catalog.write() as conn:
        ids = start_pack_moves(conn, [(c, keys[c.instance_pk]) for c in items], dst.name, plan_id, _now())
    datas = _read_sources(catalog, tiers, items, limiter, workers)

    def write(c: PackCopy) -> None:
        d = datas[c.instance_pk]
        if isinstance(d, StorageError):
            raise d
        key = keys[c.instance_pk]
        try:
            dst.put(key, d, c.sha256)
        except ObjectExists:
            pass  # a copy from an interrupted run: verified below like any other
        held = dst.stat(key)
        if held.sha256 != c.sha256 or held.size != c.size:
            raise IntegrityError(f"tier {dst.name!r}: {key} holds other bytes than were written")

    good: list[tuple[int, PackCopy]] = []
    bad: list[tuple[int, PackCopy]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for mid, c, fut in [(mid, c, pool.submit(write, c)) for mid, c in zip(ids, items)]:
            try:
                fut.result()
                good.append((mid, c))
            except StorageError as exc:
                result.failed.append(f"{c.sop_uid}: {exc}")
                bad.append((mid, c))
    datas.clear()
    if bad:
        undone = []
        for mid, c in bad:
            try:
                with catalog.read() as conn:
                    taken = references(conn, dst.name, keys[c.instance_pk])
                if not taken:
                    dst.delete(keys[c.instance_pk])
                undone.append(mid)
            except StorageError:
                pass  # the journal keeps 'pack_copying': recovery retries
        with catalog.write() as conn:
            end_pack_moves(conn, undone, "rolled_back", _now())
    if not good:
        return
    with catalog.write() as conn:
        commit_pack_moves(conn, [(mid, c, keys[c.instance_pk], None, None) for mid, c in good], dst.name, _now())
    result.moved += len(good)
    result.bytes_moved += sum(c.size for _m, c in good)
    _finish(catalog, tiers, [m for m, _c in good], problems)


# -- dropping copies that are verified elsewhere --------------------------------------------


class DropResult:
    def __init__(self, study_uid: str, tier: str) -> None:
        self.study_uid = study_uid
        self.tier = tier
        self.dropped = 0
        self.bytes_freed = 0
        self.kept = 0  # copies that are the only verified copy of their instance
        self.failed: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.failed


def drop_study_copies(catalog: Catalog, tiers: Callable[[str], Tier], study_uid: str, tier: str, *,
                      plan_id: str | None = None) -> DropResult:
    """Drop every copy of the study on ``tier`` whose instance has a verified copy on
    another tier; a copy that is the last verified one is kept (and counted)."""
    result = DropResult(study_uid, tier)
    with catalog.read() as conn:
        copies = study_pack_copies(conn, study_uid, replicas=False)  # replica copies stay (fixity)
    elsewhere: dict[int, str] = {}
    for c in copies:
        if c.tier != tier and c.state == CopyState.VERIFIED.value:
            elsewhere.setdefault(c.instance_pk, c.tier)
    here = [c for c in copies if c.tier == tier and c.state == CopyState.VERIFIED.value]
    todo = [(c, elsewhere[c.instance_pk]) for c in here if c.instance_pk in elsewhere]
    result.kept = len(here) - len(todo)
    if not todo:
        return result
    with catalog.write() as conn:
        ids = mark_drops(conn, todo, plan_id, _now())
    result.kept += len(todo) - len(ids)
    problems: list[str] = []
    result.dropped = _finish(catalog, tiers, ids, problems)
    sizes = {c.instance_pk: c.size for c, _e in todo}
    with catalog.read() as conn:
        done = drop_sources(conn, ids)  # rows still 'dropping' failed to finish
    left = {d.instance_pk for d in done}
    result.bytes_freed = sum(z for pk, z in sizes.items() if pk not in left)
    result.failed += problems
    return result


# -- recovery ------------------------------------------------------------------------------


def recover_pack_moves(catalog: Catalog, tiers: Callable[[str], Tier]) -> tuple[int, int, list[str]]:
    """Roll back 'pack_copying' and finish 'dropping' journal rows; (rolled back, finished, problems)."""
    with catalog.read() as conn:
        pending = pending_pack_moves(conn)
    rolled_back = 0
    problems: list[str] = []
    copying: dict[tuple[str, str], list[int]] = defaultdict(list)
    for m in pending:
        if m.state == PACK_COPYING:
            copying[(m.dst_tier, m.key)].append(m.id)
    for (tier, key), ids in copying.items():
        try:
            with catalog.read() as conn:
                taken = references(conn, tier, key)
            if not taken:  # the catalog never took the object: no orphan may stay
                tiers(tier).delete(key)
            with catalog.write() as conn:
                end_pack_moves(conn, ids, "rolled_back", _now())
            rolled_back += len(ids)
        except StorageError as exc:
            problems.append(f"moves {ids[0]}.. ({tier}:{key}): {exc}")
    finished = _finish(catalog, tiers, [m.id for m in pending if m.state == DROPPING], problems)
    finished += _finish_repacks(catalog, tiers, [m for m in pending if m.state == REPACKED], problems)
    return rolled_back, finished, problems


def _finish_repacks(catalog: Catalog, tiers: Callable[[str], Tier], pending: list[PendingPackMove],
                    problems: list[str]) -> int:
    """Packs a fixity repair rewrote (ilm.fixity.repack): the old pack goes once nothing points into it."""
    old: dict[tuple[str, str], list[int]] = defaultdict(list)
    for m in pending:
        old[(m.dst_tier, m.key)].append(m.id)
    done = 0
    for (tier, key), ids in old.items():
        try:
            with catalog.read() as conn:
                left = references(conn, tier, key)
            if not left:
                tiers(tier).delete(key)
        except ObjectLocked as exc:  # a WORM tier: the old pack stays until its date
            problems.append(f"old pack {tier}:{key} kept: {exc}")
        except StorageError as exc:
            problems.append(f"old pack {tier}:{key} not deleted: {exc}")
            continue
        with catalog.write() as conn:
            end_pack_moves(conn, ids, "done", _now())
        done += len(ids)
    return done
