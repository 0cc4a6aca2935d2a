"""Moving a study's copies to another tier without ever losing an image.

For each batch of instances: journal the moves -> copy (read the source
once, put it on the destination with the catalog's SHA-256; between two
file-system tiers the kernel copies the file) -> verify that what the
destination holds hashes to the catalog's SHA-256 (an S3 store checks it
itself as it takes the upload, see ``put_verified``) -> commit the new copies and
mark the sources for deletion (one transaction) -> delete the sources -> drop
their rows, never the last verified copy. While a batch is being copied, the
previous one is committed and its sources are deleted (on two threads of
their own); their rows are dropped in the next commit's transaction.
``recover`` finishes or rolls back whatever a crash interrupted, using the
journal.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ilm.catalog import Catalog
from ilm.catalog.copies import (
    InstanceCopy,
    commit_moves,
    drop_location,
    finish_moves,
    instance_copies,
    pending_moves,
    refresh_study_tiers,
    rollback_moves,
    start_moves,
    study_copies,
)
from ilm.catalog.locks import locked_instances, retain_copy, retain_sources
from ilm.errors import IntegrityError, ObjectLocked, StorageError
from ilm.lifecycle import worm
from ilm.lifecycle.limits import RateLimiter
from ilm.models import CopyState, StoredObject
from ilm.storage import FilesystemTier, ObjectExists, Tier, sha256_hex

__all__ = ["MoveResult", "move_study", "recover_moves", "RecoveryReport", "put_verified"]

BATCH = 128


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class MoveResult:
    study_uid: str
    dst: str
    moved: int = 0
    bytes_moved: int = 0
    already_there: int = 0
    retained: int = 0  # source copies kept until their WORM lock ends (ilm.lifecycle.worm)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _copy_one(c: InstanceCopy, src: Tier, dst: Tier, limiter: RateLimiter) -> tuple[str, int]:
    """Copy one object and return (sha256 the destination vouches for, size)."""
    if isinstance(src, FilesystemTier) and isinstance(dst, FilesystemTier):
        limiter.take(c.size)
        return _copy_in_kernel(c, src, dst)
    data = src.get(c.key)
    limiter.take(len(data))
    return put_verified(c, data, src.name, dst)


def _copy_in_kernel(c: InstanceCopy, src: FilesystemTier, dst: FilesystemTier) -> tuple[str, int]:
    """File system to file system: the kernel copies the file, and what the
    destination then holds is hashed once, read back from it, against the
    catalog's SHA-256 before it gets its name (``FilesystemTier.copy_in``). A
    mismatch is blamed on the source when its own bytes differ too."""
    try:
        held = dst.copy_in(c.key, src, c.sha256)
    except ObjectExists:
        held = dst.stat(c.key)  # a copy from an interrupted run: verified below like any other
    except IntegrityError:
        if src.stat(c.key).sha256 != c.sha256:
            raise IntegrityError(f"tier {src.name!r}: {c.key} does not match its catalog SHA-256; not moved") from None
        raise IntegrityError(f"tier {dst.name!r}: the copy of {c.key} holds other bytes than its catalog "
                             "SHA-256; not moved") from None
    return _check_held(c, dst, held)


def put_verified(c: InstanceCopy, data: bytes, src_name: str, dst: Tier) -> tuple[str, int]:
    """Put ``data``, read from copy ``c`` on tier ``src_name``, at ``c.key`` on ``dst``
    with the catalog's SHA-256, then check what ``dst`` holds: the copy step of a
    move, also the copy step of a fixity repair. Returns (sha256 the destination
    vouches for, size).

    What ``dst`` holds is its answer to the put when the store itself checked the
    bytes it took against the SHA-256 sent with them (``StoredObject.verified``: an
    S3 put carrying x-amz-checksum-sha256, refused with BadDigest otherwise; a
    HEAD would only return that same recorded checksum); otherwise it is asked
    (``stat``: a file is read back and hashed), as after finding an object there."""
    try:
        held = dst.put(c.key, data, c.sha256)
    except ObjectExists:
        held = dst.stat(c.key)  # a copy from an interrupted run: verified below like any other
    except IntegrityError as exc:
        # Refused for its bytes: blame the source only if what was read from it is wrong
        # (hashed here, on this rare path); else the bytes changed on their way.
        if sha256_hex(data) != c.sha256:
            raise IntegrityError(f"tier {src_name!r}: {c.key} does not match its catalog SHA-256; not moved") from None
        raise IntegrityError(f"{exc}; the source copy on tier {src_name!r} is sound and kept; not moved") from None
    if not held.verified:
        held = dst.stat(c.key)
    return _check_held(c, dst, held)


def _check_held(c: InstanceCopy, dst: Tier, held: StoredObject) -> tuple[str, int]:
    if held.sha256 != c.sha256 or held.size != c.size:
        raise IntegrityError(f"tier {dst.name!r}: {c.key} holds other bytes than were written")
    return held.sha256, held.size


def move_study(
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
    """Move every instance of a study that is not yet on ``dst_name`` there,
    ``workers`` copies at a time (into an S3 tier: its own ``upload_workers``)."""
    limiter = limiter or RateLimiter(0)
    result = MoveResult(study_uid, dst_name)
    dst = tiers(dst_name)
    workers = int(getattr(dst, "upload_workers", workers))
    from ilm.lifecycle import pack_move  # one object per study on pack_studies tiers (ilm.storage.pack)

    if pack_move.involves_packs(catalog, study_uid, dst):
        return pack_move.move_study_packed(catalog, tiers, study_uid, dst_name, plan_id=plan_id, workers=workers,
                                           limiter=limiter, progress=progress)
    with catalog.read() as conn:
        copies = study_copies(conn, study_uid, replicas=False)  # replica copies stay (fixity)
    on_dst = {c.instance_pk for c in copies if c.tier == dst_name and c.state == CopyState.VERIFIED.value}
    # One verified source copy per instance that still has to move.
    todo: dict[int, InstanceCopy] = {}
    stale: list[InstanceCopy] = []
    for c in copies:
        if c.tier == dst_name or c.state != CopyState.VERIFIED.value:
            continue
        if c.instance_pk in on_dst:
            stale.append(c)
        else:
            todo.setdefault(c.instance_pk, c)
    # Copies left on other tiers by an earlier move that got as far as commit.
    for c in stale:
        _delete_source(catalog, tiers(c.tier), c)
        result.already_there += 1
    items = list(todo.values())
    # Source deletes get threads of their own: an unlink waits for the disk (discard),
    # and should not hold up the copies of the next batch.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=2) as deleter:
        copying: _Batch | None = None
        deleting: list[_Delete] = []
        for i in range(0, len(items), BATCH):
            batch = items[i : i + BATCH]
            with catalog.write() as conn:
                ids = start_moves(conn, batch, dst_name, plan_id, _now())
            futures = [pool.submit(_copy_one, c, tiers(c.tier), dst, limiter) for c in batch]
            if copying is not None:  # the previous batch is committed while this one is copied
                deleting = _commit_batch(catalog, deleter, tiers, dst, dst_name, copying, deleting, result, progress)
            copying = _Batch(batch, ids, futures)
        if copying is not None:
            deleting = _commit_batch(catalog, deleter, tiers, dst, dst_name, copying, deleting, result, progress)
        if deleting:
            deleted, kept = _deletes_done(deleting, result)
            with catalog.write() as conn:
                finish_moves(conn, deleted, _now())
                retain_sources(conn, kept, _now())
    return result


@dataclass
class _Batch:
    copies: list[InstanceCopy]
    move_ids: list[int]
    futures: list[Future[tuple[str, int]]]


@dataclass
class _Delete:
    """A committed move's source delete: running on the pool, or None when the
    source is locked on a WORM tier (kept until its date)."""
    move_id: int
    copy: InstanceCopy
    future: Future[bool] | None


def _delete_one(src: Tier, key: str) -> bool:
    """Delete a moved source object: False when its WORM lock refuses."""
    try:
        src.delete(key)
    except ObjectLocked:
        return False
    return True


def _deletes_done(deleting: list[_Delete], result: MoveResult) -> tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]:
    """Wait for source deletes: (deleted, kept) as (move id, instance pk, source tier)."""
    deleted: list[tuple[int, int, str]] = []
    kept: list[tuple[int, int, str]] = []  # WORM: the source stays until its date
    for d in deleting:
        item = (d.move_id, d.copy.instance_pk, d.copy.tier)
        try:
            (deleted if d.future is not None and d.future.result() else kept).append(item)
        except StorageError as exc:  # committed: safe; recovery deletes it later
            result.failed.append(f"{d.copy.sop_uid}: moved, but the source copy is not deleted yet: {exc}")
    result.retained += len(kept)
    return deleted, kept


def _commit_batch(catalog: Catalog, deleter: ThreadPoolExecutor, tiers: Callable[[str], Tier], dst: Tier, dst_name: str,
                  b: _Batch, deleting: list[_Delete], result: MoveResult,
                  progress: Callable[[int], None] | None) -> list[_Delete]:
    """Wait for a batch's copies and undo those that failed; in one transaction,
    close the moves whose sources the previous batch deleted and commit the
    verified copies; then start deleting their sources on ``deleter``."""
    good: list[tuple[int, InstanceCopy, str, int]] = []
    bad: list[int] = []
    for move_id, c, fut in zip(b.move_ids, b.copies, b.futures):
        try:
            sha, size = fut.result()
            good.append((move_id, c, sha, size))
        except StorageError as exc:
            result.failed.append(f"{c.sop_uid}: {exc}")
            bad.append(move_id)
    if bad:
        failed = set(bad)
        _undo_copies(catalog, dst, [c for mid, c in zip(b.move_ids, b.copies) if mid in failed], bad)
    deleted, kept = _deletes_done(deleting, result)
    now = _now()
    locked: set[tuple[str, int]] = set()
    with catalog.write() as conn:
        finish_moves(conn, deleted, now)
        retain_sources(conn, kept, now)
        if good:
            commit_moves(conn, good, dst_name, now, worm.tier_lock(dst, now))
            by_tier: dict[str, list[int]] = defaultdict(list)
            for _m, c, _s, _z in good:
                by_tier[c.tier].append(c.instance_pk)
            locked = {(t, pk) for t, pks in by_tier.items() for pk in locked_instances(conn, pks, t, now)}
    result.moved += len(good)
    result.bytes_moved += sum(z for *_x, z in good)
    if progress:
        progress(len(b.copies))
    return [_Delete(mid, c, None if (c.tier, c.instance_pk) in locked else deleter.submit(_delete_one, tiers(c.tier), c.key))
            for mid, c, _sha, _size in good]


def _delete_source(catalog: Catalog, src: Tier, c: InstanceCopy) -> None:
    """Drop a source copy whose instance is verified elsewhere (row first: the
    object is deleted only once the catalog no longer points at it). A copy
    locked on a WORM tier is kept as RETAINED instead, until its date."""
    with catalog.write() as conn:
        if locked_instances(conn, [c.instance_pk], c.tier, _now()):
            retain_copy(conn, c.instance_pk, c.tier)
            return
        dropped = drop_location(conn, c.instance_pk, c.tier)
        refresh_study_tiers(conn, [c.instance_pk])
    if dropped:
        src.delete(c.key)


def _undo_copies(catalog: Catalog, dst: Tier, copies: list[InstanceCopy], move_ids: list[int]) -> None:
    """Remove uncommitted destination copies; if any removal fails, the journal
    keeps the moves as 'copying' so that recovery retries them."""
    try:
        for c in copies:
            dst.delete(c.key)
    except StorageError:
        return
    with catalog.write() as conn:
        rollback_moves(conn, move_ids, _now())


@dataclass
class RecoveryReport:
    rolled_back: int = 0
    finished: int = 0
    problems: list[str] = field(default_factory=list)


def recover_moves(catalog: Catalog, tiers: Callable[[str], Tier]) -> RecoveryReport:
    """Finish or roll back every move a crash interrupted.

    'copying': the destination copy was never committed: delete whatever the
    destination holds under that key and mark the move rolled back (the plan
    action stays pending and is redone). 'committed': the new copy is in the
    catalog; delete the source object and its row.
    """
    report = RecoveryReport()
    with catalog.read() as conn:
        pending = pending_moves(conn)
    for m in pending:
        try:
            if m.state == "copying":
                with catalog.read() as conn:
                    copies = [c for c in instance_copies(conn, m.instance_pk) if c.tier == m.dst_tier]
                if not copies:  # the catalog never took the destination copy
                    tiers(m.dst_tier).delete(m.key)
                with catalog.write() as conn:
                    rollback_moves(conn, [m.id], _now())
                report.rolled_back += 1
            else:
                try:
                    tiers(m.src_tier).delete(m.key)
                except ObjectLocked:  # a WORM source: kept until its date (ilm.lifecycle.worm)
                    with catalog.write() as conn:
                        retain_sources(conn, [(m.id, m.instance_pk, m.src_tier)], _now())
                    report.finished += 1
                    continue
                with catalog.write() as conn:
                    finish_moves(conn, [(m.id, m.instance_pk, m.src_tier)], _now())
                report.finished += 1
        except StorageError as exc:
            report.problems.append(f"move {m.id} ({m.key} {m.src_tier}->{m.dst_tier}): {exc}")
    from ilm.lifecycle.pack_move import recover_pack_moves  # packs and drops journal their own states

    rolled_back, finished, problems = recover_pack_moves(catalog, tiers)
    report.rolled_back += rolled_back
    report.finished += finished
    report.problems += problems
    return report

