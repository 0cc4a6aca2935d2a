"""Repairing copies inside a packed study object: a new pack from verified bytes.

A pack (``ilm.storage.pack``, tiers with ``pack_studies``) is immutable and
holds a whole study, so a bad or missing member cannot be replaced in place.
``repair_pack`` writes a new pack of the same members on the same tier, the
way a move writes one (``ilm.lifecycle.pack_move``):

1. journal every member as 'pack_copying' with the new pack's key;
2. gather each member's bytes, each checked against its catalog SHA-256: its
   range of the old pack while that still matches, else a verified
   whole-object copy on another online tier (a replica, another tier). A
   member with neither stays where it is, marked, in the old pack;
3. build the new pack, put it with its SHA-256 and check what the tier holds;
4. switch, in one transaction, every member taken to its range in the new
   pack, verified (journal: 'repacked', naming the old pack);
5. delete the old pack once no location points into it (a member kept for
   want of a source keeps it), and close the journal.

A crash before 4 leaves the old pack and the marks as they were; recovery
(``ilm.lifecycle.pack_move.recover_pack_moves``) deletes the new pack,
which nothing points into. A crash after 4 leaves the old pack, which
recovery deletes. Nothing is repacked when no bad member has a source.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.fixity import repair_sources
from ilm.catalog.packs import PackCopy, end_pack_moves, references, start_pack_moves
from ilm.catalog.repack import PackedCopy, pack_members, switch_pack
from ilm.errors import IlmError, IntegrityError, ObjectLocked, ObjectNotFound, StorageError
from ilm.models import CopyState
from ilm.storage import ObjectExists, Tier
from ilm.storage.pack import PackMember, build_pack, pack_key

__all__ = ["RepackResult", "repair_pack"]

log = logging.getLogger("ilm.fixity")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class RepackResult:
    """What one pack's repair did: the members repaired (location id -> the tier their bytes came
    from), those kept as they are (location id -> why), the new pack's key."""

    tier: str
    old_key: str
    new_key: str | None = None
    repaired: dict[int, str] = field(default_factory=dict)
    kept: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the old pack not deleted yet, and why


def _sha_ok(c: PackedCopy, data: bytes) -> bool:
    return len(data) == c.size and hashlib.sha256(data).hexdigest() == c.sha256


def _from_old_pack(tier: Tier, key: str, members: list[PackedCopy]) -> dict[int, bytes]:
    """The members whose range of the old pack still matches the catalog (a missing one is not read)."""
    wanted = [c for c in members if c.state != CopyState.MISSING.value]
    if not wanted:
        return {}
    try:
        whole: bytes | None = tier.get(key)
    except ObjectNotFound:
        return {}
    except IntegrityError:  # the tier refuses the object as a whole (an encrypted pack): member by member
        whole = None
    out: dict[int, bytes] = {}
    for c in wanted:
        if whole is not None:
            data = whole[c.pack_offset:c.pack_offset + c.pack_length]
        else:
            try:
                data = tier.get_range(key, c.pack_offset, c.pack_length)
            except ObjectNotFound:
                return out
            except IntegrityError:
                continue
            except StorageError as exc:
                if "beyond the end" in str(exc):  # a truncated pack
                    continue
                raise
        if _sha_ok(c, data):
            out[c.location_id] = data
    return out


def _from_elsewhere(catalog: Catalog, tiers: Callable[[str], Tier], c: PackedCopy, tier: str,
                    online: Sequence[str], order: dict[str, int]) -> tuple[bytes | None, str, str]:
    """(bytes, the tier they came from, '') from another verified whole-object copy, or (None, '', why)."""
    with catalog.read() as conn:
        sources = repair_sources(conn, c.instance_pk, excluding_tier=tier, online=online)
    if not sources:
        return None, "", "no other verified copy to repair from: kept as it is in its pack, never deleted"
    problems = []
    for s in sorted(sources, key=lambda s: order.get(s.tier, len(order))):
        try:
            data = tiers(s.tier).get(s.key)
        except (StorageError, IlmError) as exc:
            problems.append(f"{s.tier}: {exc}")
            continue
        if _sha_ok(c, data):
            return data, s.tier, ""
        problems.append(f"{s.tier}: its bytes do not match the catalog either")
    return None, "", "repair failed: " + "; ".join(problems)


def repair_pack(catalog: Catalog, tiers: Callable[[str], Tier], tier: str, key: str, *, online: Sequence[str],
                tier_order: Sequence[str], actor: str) -> RepackResult:
    """Rewrite the pack ``key`` on ``tier`` so that its bad or missing members hold verified bytes again
    (see the module docstring). StorageError when the old pack or the tier cannot be read or written;
    the catalog and the old pack are then as they were."""
    result = RepackResult(tier, key)
    dst = tiers(tier)
    with catalog.read() as conn:
        members = pack_members(conn, tier, key)
    if not members:
        return result
    good = _from_old_pack(dst, key, members)
    order = {n: i for i, n in enumerate(tier_order)}
    datas: dict[int, bytes] = dict(good)
    sources: dict[int, str] = {}
    for c in members:
        if c.location_id in good:
            continue
        data, source, why = _from_elsewhere(catalog, tiers, c, tier, online, order)
        if data is None:
            result.kept[c.location_id] = why
        else:
            datas[c.location_id], sources[c.location_id] = data, source
    if not sources:  # no bad member can be repaired: a new pack would change nothing
        return result
    taken = [c for c in members if c.location_id in datas]
    study_uid = taken[0].study_uid
    new_key = pack_key(study_uid)
    copies = [PackCopy(c.instance_pk, c.sop_uid, c.series_uid, c.sha256, c.size, tier, key, c.state, c.pack_offset,
                       c.pack_length) for c in taken]
    with catalog.write() as conn:
        ids = start_pack_moves(conn, [(pc, new_key) for pc in copies], tier, None, _now())
    pack = build_pack(study_uid, [PackMember(c.sop_uid, c.series_uid, datas[c.location_id]) for c in taken])
    datas.clear()
    try:
        try:
            dst.put(new_key, pack.data, pack.sha256)
        except ObjectExists:
            pass  # a retried put that landed: checked below
        held = dst.stat(new_key)
        if held.sha256 != pack.sha256 or held.size != len(pack.data):
            raise IntegrityError(f"tier {tier!r}: the new pack {new_key} holds other bytes than were written")
        entries = {e.sop_uid: e for e in pack.entries}
        now = _now()
        with catalog.write() as conn:
            switch_pack(conn, key, new_key, [(mid, c, entries[c.sop_uid].offset, entries[c.sop_uid].length)
                                             for mid, c in zip(ids, taken)], now)
            for c in taken:
                if c.location_id in sources:
                    append_audit(conn, at=now, actor=actor, action="fixity.repair", study_uid=c.study_uid,
                                 detail={"tier": tier, "key": new_key, "sop_uid": c.sop_uid,
                                         "from": sources[c.location_id], "was": c.state, "old_pack": key})
    except (StorageError, IlmError):
        _roll_back(catalog, dst, new_key, ids)
        raise
    result.new_key = new_key
    result.repaired = sources
    log.info("fixity: pack %s:%s rewritten as %s, %d member(s) repaired", tier, key, new_key, len(sources))
    _drop_old(catalog, dst, key, ids, result.problems)
    return result


def _roll_back(catalog: Catalog, dst: Tier, new_key: str, ids: list[int]) -> None:
    """The switch did not happen: the new pack goes (nothing points into it), the journal is closed."""
    try:
        with catalog.read() as conn:
            taken = references(conn, dst.name, new_key)
        if not taken:
            dst.delete(new_key)
    except (StorageError, IlmError) as exc:
        log.warning("fixity: new pack %s:%s not deleted (recovery deletes it): %s", dst.name, new_key, exc)
        return  # the journal keeps 'pack_copying'
    with catalog.write() as conn:
        end_pack_moves(conn, ids, "rolled_back", _now())


def _drop_old(catalog: Catalog, dst: Tier, old_key: str, ids: list[int], problems: list[str]) -> None:
    """Delete the old pack when no location points into it any more (members kept there keep it)."""
    try:
        with catalog.read() as conn:
            left = references(conn, dst.name, old_key)
        if not left:
            with contextlib.suppress(ObjectNotFound):  # gone already (an earlier run deleted it): done
                dst.delete(old_key)
    except ObjectLocked as exc:  # a WORM tier: the old pack stays until its date (reconcile finds it then)
        problems.append(f"old pack {dst.name}:{old_key} kept: {exc}")
    except (StorageError, IlmError) as exc:
        problems.append(f"old pack {dst.name}:{old_key} not deleted yet (recovery deletes it): {exc}")
        return  # the journal keeps 'repacked'
    with catalog.write() as conn:
        end_pack_moves(conn, ids, "done", _now())
