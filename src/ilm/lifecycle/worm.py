"""Immutability (WORM): locks on copies, copies kept until their date, legal holds mirrored to S3.

A tier with ``worm`` set locks each copy it writes for ``retain_days``
(S3 Object Lock; a read-only file on a file system) and refuses to delete it
before then (ObjectLocked). Around that, ilm never tries:

- the catalog records each copy's lock (:func:`tier_lock` gives the mode and
  date when it is written);
- a plan vetoes the expiry of a study with a locked copy (the ``worm_lock``
  protection), apply re-checks it, purge refuses such a study
  (:func:`purge_lock`);
- a move off a WORM tier copies the study and keeps the locked source copy
  as RETAINED; :func:`drop_released` deletes it on a later run, once its date
  has passed;
- a legal hold (``ilm hold add``) is mirrored as an S3 Object Lock legal hold
  on the study's objects on WORM S3 tiers, and cleared when the last hold on
  the study is released (:func:`mirror_holds`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.locks import (
    copies_on_tiers, drop_released as drop_released_rows, held_studies, lock_summary, released_copies, studies_covered,
    study_locks,
)
from ilm.config import Settings
from ilm.errors import StorageError
from ilm.storage import Tier

__all__ = ["tier_lock", "purge_lock", "drop_released", "ReleaseReport", "mirror_holds", "MirrorReport",
           "LegalHolds", "worm_tiers", "covered_studies", "hold_new_object",
           "WormStatus", "worm_status"]

log = logging.getLogger("ilm.worm")


@runtime_checkable
class LegalHolds(Protocol):
    """A tier that can put a legal hold on an object (S3 Object Lock)."""

    def set_legal_hold(self, key: str, on: bool) -> None: ...


def _backend(tier: Any) -> Any:
    """The storage backend under any wrapper (an encrypting tier keeps it as ``inner``)."""
    while hasattr(tier, "inner"):
        tier = tier.inner
    return tier


def tier_lock(tier: Tier, now: datetime) -> tuple[str, datetime] | None:
    """(mode, retain-until) of a copy written to ``tier`` at ``now``; None on a tier without WORM."""
    backend = _backend(tier)
    mode = str(getattr(backend, "worm", "off"))
    if mode == "off":
        return None
    return mode, now + timedelta(days=int(getattr(backend, "retain_days", 0)))


def worm_tiers(settings: Settings) -> list[str]:
    return [name for name, t in settings.tiers.items() if t.worm != "off"]


def purge_lock(catalog: Catalog, study_uid: str, now: datetime) -> datetime | None:
    """The latest retain-until of the study's copies, when it is after ``now`` (the study cannot be purged)."""
    with catalog.read() as conn:
        return study_locks(conn, [study_uid], after=now).get(study_uid)


@dataclass
class ReleaseReport:
    dropped: int = 0
    problems: list[str] = field(default_factory=list)


def drop_released(catalog: Catalog, tiers: Callable[[str], Tier], now: datetime) -> ReleaseReport:
    """Delete the copies a move kept only for their lock, now that the lock has ended
    (the study's verified copy is on another tier). A store still refusing (its own
    clock, a legal hold) keeps the copy for the next run."""
    report = ReleaseReport()
    with catalog.read() as conn:
        due = released_copies(conn, now)
    gone = []
    for c in due:
        try:
            tiers(c.tier).delete(c.key)
            gone.append(c)
        except StorageError as exc:
            report.problems.append(f"{c.tier}:{c.key}: {exc}")
    if gone:
        with catalog.write() as conn:
            drop_released_rows(conn, gone)
            append_audit(conn, at=now, actor="ilm-worm", action="worm.release",
                         detail={"copies": len(gone), "tiers": sorted({c.tier for c in gone})})
    report.dropped = len(gone)
    return report


@dataclass
class MirrorReport:
    held: int = 0       # objects set to legal hold ON
    released: int = 0   # objects set to OFF
    problems: list[str] = field(default_factory=list)


def mirror_holds(catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier],
                 study_uids: Iterable[str], *, only_held: bool = False) -> MirrorReport:
    """Make the S3 legal hold of these studies' objects on WORM tiers match ilm's holds:
    ON while an active hold covers the study, OFF otherwise (``only_held``: set the ONs only,
    after a move wrote new objects)."""
    report = MirrorReport()
    uids = sorted(set(study_uids))
    capable = [n for n in worm_tiers(settings) if isinstance(_backend(tiers(n)), LegalHolds)]
    if not uids or not capable:
        return report
    with catalog.read() as conn:
        copies = copies_on_tiers(conn, uids, capable)
        held = held_studies(conn, uids)
    for c in copies:
        on = c.study_uid in held
        if only_held and not on:
            continue
        try:
            _backend(tiers(c.tier)).set_legal_hold(c.key, on)
        except StorageError as exc:
            report.problems.append(f"{c.tier}:{c.key}: {exc}")
            continue
        if on:
            report.held += 1
        else:
            report.released += 1
    if report.problems:
        log.warning("legal hold not mirrored on %d objects: %s", len(report.problems), report.problems[0])
    return report


def hold_new_object(catalog: Catalog, tier: Tier, key: str, study_uid: str) -> None:
    """An object just written to a WORM tier for a study under a legal hold gets the hold too
    (a failure is logged: the catalog's hold still protects it; 'ilm hold sync' retries)."""
    backend = _backend(tier)
    if not isinstance(backend, LegalHolds):
        return
    with catalog.read() as conn:
        if not held_studies(conn, [study_uid]):
            return
    try:
        backend.set_legal_hold(key, True)
    except StorageError as exc:
        log.warning("legal hold not set on new object %s of held study %s: %s (run 'ilm hold sync')",
                    key, study_uid, exc)


@dataclass(frozen=True, slots=True)
class WormStatus:
    """A tier's immutability settings and what it holds under lock (ilm worm status)."""

    tier: str
    worm: str
    retain_days: int
    locked: int = 0
    locked_bytes: int = 0
    locked_until: datetime | None = None
    retained: int = 0
    retained_bytes: int = 0
    next_release: datetime | None = None


def worm_status(catalog: Catalog, settings: Settings, now: datetime) -> list[WormStatus]:
    """Every WORM tier, and any other tier still holding locked copies (written while it was WORM)."""
    with catalog.read() as conn:
        held = {t.tier: t for t in lock_summary(conn, now)}
    out = []
    for name in [*worm_tiers(settings), *sorted(set(held) - set(worm_tiers(settings)))]:
        t = settings.tiers.get(name)
        s = held.get(name)
        out.append(WormStatus(name, t.worm if t else "(not configured)", t.retain_days if t else 0,
                              *((s.locked, s.locked_bytes, s.locked_until, s.retained, s.retained_bytes,
                                 s.next_release) if s else ())))
    return out


def covered_studies(catalog: Catalog, scope: str, target: str) -> list[str]:
    """The studies a hold on ``scope`` ``target`` covers."""
    with catalog.read() as conn:
        return studies_covered(conn, scope, target)
