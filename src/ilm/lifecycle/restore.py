"""Restores from archive tiers (tape, Glacier): request, copy after the latency, expire.

An archive tier (``archive = true``) holds its objects on a folder or an S3
bucket like any tier, but a read needs a restore first, as with tape or S3
Glacier. A restore of a study goes

    requested --(retrieval_latency_seconds pass)--> restoring --> ready --(restored_copy_days)--> expired
                                                        \\--> failed

- ``request_restores`` records a request per study; a request for a study with
  a request under way joins it (coalesces); a request for a study restored
  already keeps its copies longer (as a repeated S3 restore request does).
- ``process_restores`` is the worker step, run every second by ``ilm serve``
  (and by ``ilm recall --wait``): for each request whose latency has passed it
  copies the study's archived instances to the restore target tier (the first
  non-archive tier of the configuration) with the same copy-and-verify as a
  move, then records the copies in one transaction with an expiry of
  ``restored_copy_days``; readers pick them automatically (they are on a
  hotter tier). It also drops restored copies whose time is up: the row is
  marked 'deleting' (readers stop using it), the object deleted, the row
  removed. The archive copy is never touched, and a restored copy that has
  become an instance's last verified copy is kept for good.

Crash safety: the request row is the journal. A run killed while copying
leaves the request 'restoring'; the next run copies again, adopting objects
the killed run wrote (their SHA-256 is verified), so no object is left that the
catalog does not know. A failed restore removes what it wrote. Every request,
completion, failure and drop is audited.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ilm.catalog import Catalog
from ilm.catalog.access import instance_refs
from ilm.catalog.audit import append_audit
from ilm.catalog.copies import InstanceCopy
from ilm.catalog.restores import (
    ACTIVE_STATES,
    RestoreItem,
    RestoreRow,
    drop_retired,
    due_restores,
    expiring_copies,
    extend_restore,
    finish_expired_restores,
    insert_restore,
    latest_restore,
    list_restores,
    lock_restores,
    moves_in_flight,
    record_restored,
    restore_items,
    retire_copies,
    set_restore_state,
    target_rows,
    claim_restore,
    renew_lease,
    release_lease,
)
from ilm.config import Settings
from ilm.errors import ConfigError, IlmError, IntegrityError, NotFound, NotReady, StorageError
from ilm.lifecycle import lease, worm
from ilm.lifecycle.limits import RateLimiter
from ilm.lifecycle.move import _copy_one
from ilm.storage import ObjectExists, Tier

log = logging.getLogger(__name__)

# A worker's claim on a restore lapses this long after its last renewal (renewed every third
# of it while copying). On the same host, a dead owner's claim is void at once (ilm.lifecycle.lease).
LEASE_SECONDS = 600.0

__all__ = [
    "RestoreStatus",
    "RestoreReport",
    "archive_tiers",
    "restore_target",
    "request_restores",
    "restore_statuses",
    "check_readable",
    "process_restores",
    "WORKER_INTERVAL_SECONDS",
]

# How often ilm serve runs process_restores; also the Retry-After given when a
# restore's latency has passed but the worker has not copied it yet.
WORKER_INTERVAL_SECONDS = 1.0

ON_READ_ACTOR = "on-read"


@dataclass(frozen=True)
class RestoreStatus:
    """Where a study's restore stands.

    ``state``: requested | restoring | ready | failed | expired, or 'online'
    when the study is readable without a restore (not on an archive tier).
    ``retry_after``: seconds until it should be readable (0 when ready or
    online, None when failed or expired: a new request is needed).
    """

    study_uid: str
    state: str
    archive_tier: str | None = None
    target_tier: str | None = None
    requested_by: str = ""
    requested_at: datetime | None = None
    ready_at: datetime | None = None
    completed_at: datetime | None = None
    expires_at: datetime | None = None
    retry_after: float | None = 0.0
    detail: str = ""
    id: int | None = None

    @property
    def done(self) -> bool:
        """Nothing more will happen without a new request."""
        return self.state in ("ready", "online", "failed", "expired")


@dataclass
class RestoreReport:
    """What one run of ``process_restores`` did."""

    completed: list[str] = field(default_factory=list)  # study UIDs now readable
    failed: list[tuple[str, str]] = field(default_factory=list)  # (study UID, reason)
    waiting: list[str] = field(default_factory=list)  # due, but copies on the target are busy
    dropped: int = 0  # restored copies removed
    kept: int = 0  # restored copies kept for good (they had become the last copy)
    expired: list[str] = field(default_factory=list)  # study UIDs whose restore expired
    problems: list[str] = field(default_factory=list)  # drops to retry next run


def archive_tiers(settings: Settings) -> list[str]:
    return [name for name, t in settings.tiers.items() if t.archive]


def restore_target(settings: Settings) -> str:
    """Restored copies go to the first (hottest) tier that is not an archive tier."""
    for name, t in settings.tiers.items():
        if not t.archive:
            return name
    raise ConfigError("every tier is an archive tier: a restore needs a tier that is not (archive = false) "
                      "to put the restored copies on")


def _status(row: RestoreRow, now: datetime) -> RestoreStatus:
    if row.state in ("requested", "restoring"):
        left = (row.ready_at - now).total_seconds()
        retry: float | None = left if left > 0 else WORKER_INTERVAL_SECONDS
    elif row.state == "ready" and (row.expires_at is None or row.expires_at > now):
        retry = 0.0
    else:
        retry = None
    state = row.state
    if state == "ready" and retry is None:
        state = "expired"  # past its expiry, not dropped yet
    return RestoreStatus(
        study_uid=row.study_uid, state=state, archive_tier=row.archive_tier, target_tier=row.target_tier,
        requested_by=row.requested_by, requested_at=row.requested_at, ready_at=row.ready_at,
        completed_at=row.completed_at, expires_at=row.expires_at, retry_after=retry, detail=row.detail, id=row.id,
    )


def _live(row: RestoreRow | None, now: datetime) -> RestoreRow | None:
    """The row if it is under way, or ready with copies still valid."""
    if row is None or row.state not in ACTIVE_STATES:
        return None
    if row.state == "ready" and row.expires_at is not None and row.expires_at <= now:
        return None
    return row


def _archived(catalog: Catalog, settings: Settings, study_uid: str, now: datetime) -> tuple[bool, list[tuple[str, str]]]:
    """(the study is active, [(archive tier, key)] of instances readable only from an archive tier)."""
    archive = set(archive_tiers(settings))
    with catalog.read() as conn:
        refs = instance_refs(conn, study_uid, tier_order=list(settings.tiers), now=now)
    return bool(refs), [(r.tier, r.key) for r in refs if r.tier in archive]


def _days(settings: Settings, tier: str) -> int:
    t = settings.tiers.get(tier)
    return t.restored_copy_days if t is not None else 0


def request_restores(
    catalog: Catalog,
    settings: Settings,
    tiers: Callable[[str], Tier],
    study_uids: Iterable[str],
    by: str,
    now: datetime,
) -> list[RestoreStatus]:
    """Request restores of studies; one status per study, in the order given.

    NotFound if a study is not in the catalog (nothing is requested then);
    StorageError if an archive tier holding one of them cannot be reached.
    """
    uids = list(dict.fromkeys(u.strip() for u in study_uids if u.strip()))
    if not uids:
        raise NotFound("no Study Instance UID given")
    target = restore_target(settings)
    found: dict[str, list[tuple[str, str]]] = {}
    missing = []
    for uid in uids:
        active, archived = _archived(catalog, settings, uid, now)
        if not active:
            missing.append(uid)
        found[uid] = archived
    if missing:
        raise NotFound(f"no active study {', '.join(missing)} in the catalog")
    # A store that cannot be reached fails the request now, with its reason.
    probed: set[str] = set()
    for archived in found.values():
        for tier, key in archived[:1]:
            if tier not in probed:
                tiers(tier).stat(key)
                probed.add(tier)
    out: list[RestoreStatus] = []
    with catalog.write() as conn:
        lock_restores(conn)
        for uid in uids:
            archived = found[uid]
            live = _live(latest_restore(conn, uid, ACTIVE_STATES), now)
            if not archived:
                if live is not None and live.state == "ready":
                    expires = now + timedelta(days=_days(settings, live.archive_tier))
                    if live.expires_at is None or expires > live.expires_at:
                        extend_restore(conn, live, expires)
                        append_audit(conn, at=now, actor=by, action="restore.extend", study_uid=uid,
                                     detail={"restore": live.id, "tier": live.target_tier,
                                             "expires_at": expires.isoformat()})
                        live = latest_restore(conn, uid, ACTIVE_STATES)
                    assert live is not None
                    out.append(_status(live, now))
                elif live is not None:
                    out.append(_status(live, now))
                else:
                    out.append(RestoreStatus(study_uid=uid, state="online", retry_after=0.0,
                                             detail="not on an archive tier: readable now"))
                continue
            if live is not None and live.state in ("requested", "restoring"):
                out.append(_status(live, now))  # joins the request under way
                continue
            by_tier = Counter(t for t, _k in archived)
            archive = by_tier.most_common(1)[0][0]
            latency = max(settings.tiers[t].retrieval_latency_seconds for t in by_tier)
            row = insert_restore(conn, study_uid=uid, archive_tier=archive, target_tier=target, requested_by=by,
                                 requested_at=now, ready_at=now + timedelta(seconds=latency))
            append_audit(conn, at=now, actor=by, action="restore.request", study_uid=uid,
                         detail={"restore": row.id, "archive_tier": archive, "target_tier": target,
                                 "instances": len(archived), "ready_at": row.ready_at.isoformat()})
            out.append(_status(row, now))
    return out


def restore_statuses(catalog: Catalog, now: datetime, *, active_only: bool = True,
                     study_uids: Iterable[str] | None = None, limit: int = 1000) -> list[RestoreStatus]:
    """Restores, newest first (with ``study_uids``: the newest of each of those studies)."""
    with catalog.read() as conn:
        if study_uids is not None:
            rows = [r for r in (latest_restore(conn, u) for u in dict.fromkeys(study_uids)) if r is not None]
        else:
            rows = list_restores(conn, ACTIVE_STATES if active_only else None, limit=limit)
    statuses = [_status(r, now) for r in rows]
    if active_only:
        statuses = [s for s in statuses if s.state in ACTIVE_STATES]
    return statuses


def check_readable(catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier], study_uid: str,
                   now: datetime) -> None:
    """Return if every instance of the study can be read now; else raise NotReady
    with the seconds until its restore should be done (None: no restore under
    way). On an archive tier whose ``retrieval_policy`` is ``on_read`` a read
    starts the restore itself (as FabricPool reads bring data back); otherwise
    a restore must be requested (ilm recall, POST /api/restores), as with S3 Glacier."""
    _active, archived = _archived(catalog, settings, study_uid, now)
    if not archived:
        return
    tier = archived[0][0]
    with catalog.read() as conn:
        row = latest_restore(conn, study_uid)
    live = _live(row, now)
    if live is not None and live.state in ("requested", "restoring"):
        st = _status(live, now)
        raise NotReady(f"study {study_uid} is being restored from archive tier {live.archive_tier!r}; "
                       f"ready in about {st.retry_after:.0f} s", retry_after=st.retry_after)
    if settings.tiers[tier].retrieval_policy == "on_read":
        try:
            st = request_restores(catalog, settings, tiers, [study_uid], ON_READ_ACTOR, now)[0]
        except StorageError as exc:
            raise NotReady(f"study {study_uid} is on archive tier {tier!r} and a restore could not be "
                           f"started: {exc}") from None
        if st.retry_after is not None and st.state in ("requested", "restoring"):
            raise NotReady(f"study {study_uid} is on archive tier {tier!r}: a restore was started on this read; "
                           f"ready in about {st.retry_after:.0f} s", retry_after=st.retry_after)
    why = ""
    if row is not None and row.state == "failed":
        why = f"; the last restore failed: {row.detail}"
    raise NotReady(f"study {study_uid} is on archive tier {tier!r}: it must be restored first "
                   f"(ilm recall {study_uid}, or POST /api/restores){why}", retry_after=None)


# -- the worker step ----------------------------------------------------------------


def _restore_one(it: RestoreItem, src: Tier, dst: Tier) -> tuple[str, int]:
    """Copy one archived instance to the target tier and verify what it holds there."""
    if it.pack_offset is None:
        c = InstanceCopy(it.instance_pk, it.sop_uid, it.sha256, it.size, it.tier, it.key, "verified")
        return _copy_one(c, src, dst, RateLimiter(0))
    get_range = getattr(src, "get_range", None)
    if get_range is None:
        raise StorageError(f"tier {src.name!r} cannot read byte ranges: packed study objects cannot be restored")
    data = get_range(it.key, it.pack_offset, it.pack_length)
    try:
        dst.put(it.target_key, data, it.sha256)
    except ObjectExists:
        pass  # written by an interrupted run: verified below
    except IntegrityError:
        raise IntegrityError(f"tier {src.name!r}: {it.sop_uid} in {it.key} does not match its catalog SHA-256") from None
    held = dst.stat(it.target_key)
    if held.sha256 != it.sha256 or held.size != it.size:
        raise IntegrityError(f"tier {dst.name!r}: {it.target_key} holds other bytes than were written")
    return held.sha256, held.size


def _fail(catalog: Catalog, row: RestoreRow, reason: str, now: datetime) -> None:
    with catalog.write() as conn:
        if set_restore_state(conn, row.id, "failed", from_states=("requested", "restoring"), detail=reason[:2000]):
            append_audit(conn, at=now, actor="ilm-restore", action="restore.fail", study_uid=row.study_uid,
                         detail={"restore": row.id, "archive_tier": row.archive_tier, "reason": reason[:500]})


def _clean_up(catalog: Catalog, dst: Tier, items: list[RestoreItem]) -> None:
    """Remove objects a failed restore (or a killed run before it) left on the
    target tier: only those no catalog row and no move in flight points at."""
    pks = [it.instance_pk for it in items]
    with catalog.read() as conn:
        keep = target_rows(conn, pks, dst.name) | moves_in_flight(conn, pks, dst.name)
    for it in items:
        if it.instance_pk not in keep:
            try:
                dst.delete(it.target_key)
            except StorageError:
                pass  # unreachable: a later successful restore adopts it


class _Lease:
    """This run's lease on one restore: claimed before copying, renewed while copying,
    checked in the transaction that records the copies, released at the end."""

    def __init__(self, catalog: Catalog, restore_id: int, now: datetime) -> None:
        self.catalog, self.id, self.now = catalog, restore_id, now
        self.owner = lease.new_owner()
        self._started = self._renewed = time.monotonic()

    def until(self) -> datetime:
        return self.now + timedelta(seconds=LEASE_SECONDS + time.monotonic() - self._started)

    def claim(self) -> bool:
        with self.catalog.write() as conn:
            return claim_restore(conn, self.id, self.owner, self.now, self.until(), lease.owner_alive)

    def renew(self, conn: Any = None, *, force: bool = False) -> bool:
        """Still ours? Renewed every third of the lease (always with ``force``)."""
        if not force and time.monotonic() - self._renewed < LEASE_SECONDS / 3:
            return True
        self._renewed = time.monotonic()
        if conn is not None:
            return renew_lease(conn, self.id, self.owner, self.until())
        with self.catalog.write() as c:
            return renew_lease(c, self.id, self.owner, self.until())

    def release(self) -> None:
        try:
            with self.catalog.write() as conn:
                release_lease(conn, self.id, self.owner)
        except IlmError as exc:  # the lease lapses by itself
            log.warning("could not release the lease of restore %d: %s", self.id, exc)


def _complete(catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier], row: RestoreRow, now: datetime,
              workers: int, report: RestoreReport) -> None:
    if row.archive_tier not in settings.tiers or row.target_tier not in settings.tiers:
        _fail(catalog, row, f"tier {row.archive_tier!r} or {row.target_tier!r} is no longer configured", now)
        report.failed.append((row.study_uid, "tier no longer configured"))
        return
    held = _Lease(catalog, row.id, now)
    if not held.claim():  # another worker (this process or another) is copying it
        report.waiting.append(row.study_uid)
        return
    try:
        _copy_restore(catalog, settings, tiers, row, now, workers, report, held)
    finally:
        held.release()


def _copy_restore(catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier], row: RestoreRow,
                  now: datetime, workers: int, report: RestoreReport, held: _Lease) -> None:
    with catalog.read() as conn:
        items, busy = restore_items(conn, row.study_uid, archive_tiers(settings), row.target_tier, now)
    if busy:
        report.waiting.append(row.study_uid)  # a copy there is being dropped: next run
        return
    try:
        dst = tiers(row.target_tier)
        srcs = {t: tiers(t) for t in {it.tier for it in items}}
    except IlmError as exc:
        _fail(catalog, row, str(exc), now)
        report.failed.append((row.study_uid, str(exc)))
        return
    good: list[tuple[RestoreItem, str, int]] = []
    errors: list[str] = []
    lost = False
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [(it, pool.submit(_restore_one, it, srcs[it.tier], dst)) for it in items]
        for it, fut in futures:
            try:
                sha, size = fut.result()
                good.append((it, sha, size))
            except StorageError as exc:
                errors.append(f"{it.sop_uid}: {exc}")
            if not lost and not held.renew():
                lost = True  # taken over after our lease lapsed: stop, leave the work to the new owner
                for _it, f in futures:
                    f.cancel()
    if lost:
        # What was written stays: the new owner adopts it (same bytes, verified). Cleaning up
        # here could delete copies the new owner has just written.
        log.warning("restore %d of %s: lease lost to another worker; left to it", row.id, row.study_uid)
        report.waiting.append(row.study_uid)
        return
    if errors:
        _clean_up(catalog, dst, items)
        reason = errors[0] + (f" (and {len(errors) - 1} more instances)" if len(errors) > 1 else "")
        _fail(catalog, row, reason, now)
        report.failed.append((row.study_uid, reason))
        return
    expires = now + timedelta(days=_days(settings, row.archive_tier))
    lock = worm.tier_lock(dst, now)
    if lock is not None:  # restored onto a WORM tier: the copy cannot go before its lock ends
        expires = max(expires, lock[1])
    with catalog.write() as conn:
        if not held.renew(conn, force=True):  # checked in the transaction that records the copies
            report.waiting.append(row.study_uid)
            return
        record_restored(conn, good, row.target_tier, now, expires, lock)
        if set_restore_state(conn, row.id, "ready", from_states=("requested", "restoring"), completed_at=now,
                             expires_at=expires, detail=""):
            append_audit(conn, at=now, actor="ilm-restore", action="restore.complete", study_uid=row.study_uid,
                         detail={"restore": row.id, "archive_tier": row.archive_tier, "target_tier": row.target_tier,
                                 "instances": len(good), "bytes": sum(z for _i, _s, z in good),
                                 "expires_at": expires.isoformat()})
    report.completed.append(row.study_uid)


def _expire(catalog: Catalog, tiers: Callable[[str], Tier], now: datetime, report: RestoreReport) -> None:
    with catalog.write() as conn:
        copies = expiring_copies(conn, now)
        to_delete, kept = retire_copies(conn, copies) if copies else ([], [])
        for uid in sorted({c.study_uid for c in kept}):
            append_audit(conn, at=now, actor="ilm-restore", action="restore.keep", study_uid=uid,
                         detail={"copies": sum(1 for c in kept if c.study_uid == uid),
                                 "reason": "the restored copy is the last verified copy: kept, no expiry"})
    report.kept += len(kept)
    gone = []
    for c in to_delete:
        try:
            tiers(c.tier).delete(c.key)
            gone.append(c)
        except IlmError as exc:  # the row stays 'deleting': retried next run
            report.problems.append(f"{c.tier}:{c.key}: {exc}")
    with catalog.write() as conn:
        drop_retired(conn, gone)
        for uid in sorted({c.study_uid for c in gone}):
            mine = [c for c in gone if c.study_uid == uid]
            append_audit(conn, at=now, actor="ilm-restore", action="restore.drop", study_uid=uid,
                         detail={"tier": mine[0].tier, "copies": len(mine)})
        report.expired.extend(r.study_uid for r in finish_expired_restores(conn, now))
    report.dropped += len(gone)


def process_restores(catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier], now: datetime, *,
                     study_uid: str | None = None, workers: int = 4) -> RestoreReport:
    """One worker step: drop restored copies whose time is up, then copy every
    restore whose latency has passed (only ``study_uid``'s when given; then
    nothing is dropped). Idempotent: a re-run after a crash finishes the work."""
    report = RestoreReport()
    if study_uid is None:
        _expire(catalog, tiers, now, report)
    with catalog.read() as conn:
        due = due_restores(conn, now)
    for row in due:
        if study_uid is not None and row.study_uid != study_uid:
            continue
        _complete(catalog, settings, tiers, row, now, workers, report)
    return report
