"""Ingest when the ingest tier is full: write to the next tier down that has room.

A full disk must never make ingest fail while a lower tier has room. When the
ingest tier refuses a write for lack of space (``TierFull``: ENOSPC or a quota
on a file system, 507/QuotaExceeded on S3), the instance is written to the
tiers below it, in their configured order, and catalogued there; the first
that accepts it wins. Archive tiers (``archive = true``) are skipped: an
instance just received must be readable at once, and a copy on tape or
Glacier is not. When no tier takes it, the instance is refused as retryable
(the sender keeps it and sends it again).

Each spill is logged; the first spill of a study to a tier (per process) is
also written to the audit trail (``ingest.spill``), so an administrator sees
which studies landed lower than the ingest tier and why. The watermark run
(``ilm watermark``) is what keeps the ingest tier from filling up; this is
the safety net behind it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.config import Settings
from ilm.errors import StorageError, TierFull
from ilm.storage import ObjectExists, Tier

__all__ = ["Spill", "Spilled", "lower_tiers"]

log = logging.getLogger("ilm.ingest")


def lower_tiers(settings: Settings, tier: str) -> list[str]:
    """The tiers below ``tier`` that may take new instances (not archive tiers), in order."""
    names = settings.lifecycle_tiers  # never a replica tier (ilm.fixity.replicas)
    below = names[names.index(tier) + 1:] if tier in names else []
    return [n for n in below if not settings.tiers[n].archive]


@dataclass(frozen=True, slots=True)
class Spilled:
    """Where the instance went instead."""

    tier_name: str
    tier: Tier
    sha256: str
    wrote: bool  # False: the very same bytes were there already (a crash between write and commit)


class Spill:
    """Per-service spill state: which (study, tier) spills were audited already."""

    def __init__(self, settings: Settings, catalog: Catalog, tiers: Callable[[str], Tier]) -> None:
        self.settings = settings
        self.catalog = catalog
        self.tiers = tiers
        self._audited: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def put(self, full_tier: str, key: str, blob: bytes, study_uid: str, why: TierFull) -> Spilled | None:
        """Write ``blob`` to the first lower tier that takes it; None when none does."""
        sha = None
        for name in lower_tiers(self.settings, full_tier):
            try:
                tier = self.tiers(name)
                try:
                    stored = tier.put(key, blob)
                    spilled = Spilled(name, tier, stored.sha256, True)
                except ObjectExists:
                    sha = sha or hashlib.sha256(blob).hexdigest()
                    if tier.stat(key).sha256 != sha:
                        continue  # other bytes under that key there: not ours to adopt
                    spilled = Spilled(name, tier, sha, False)
            except StorageError as exc:  # that one is full or down too: try the next
                log.warning("ingest: tier %r cannot take %s either: %s", name, key, exc)
                continue
            self._note(full_tier, name, study_uid, why)
            return spilled
        log.error("ingest: tier %r is full and no lower tier took %s: %s", full_tier, key, why)
        return None

    def _note(self, full_tier: str, tier: str, study_uid: str, why: TierFull) -> None:
        with self._lock:
            first = (study_uid, tier) not in self._audited
            self._audited.add((study_uid, tier))
        if not first:
            return
        log.warning("ingest: tier %r is full; study %s is being stored on %r (%s)", full_tier, study_uid, tier, why)
        try:
            with self.catalog.write() as conn:
                append_audit(conn, at=datetime.now(UTC), actor="ilm-ingest", action="ingest.spill",
                             study_uid=study_uid, detail={"ingest_tier": full_tier, "stored_on": tier,
                                                          "reason": str(why)[:300]})
        except Exception as exc:  # noqa: BLE001 - the instance is stored; the audit entry is best effort
            log.error("ingest: could not audit the spill of %s to %r: %s", study_uid, tier, exc)
