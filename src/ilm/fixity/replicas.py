"""Replica copies: the ``replicas`` tier option keeps a second copy of every
instance stored on a tier, on another (replica) tier, so that a fixity repair
has a source.

Ingest writes the replica right after the primary copy is catalogued, in the
same request (synchronously: no window of exposure while the replica tier is
up). When the replica tier fails, the instance is stored all the same (the
primary copy is safe and acknowledged) and ``fill`` writes the missing
replica later: every ``ilm verify`` and every pass of the scrub in ``ilm serve``
runs it. Moves never move or delete replica copies; purge deletes them with
the study.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ilm.catalog import Catalog
from ilm.catalog.copies import InstanceCopy
from ilm.catalog.fixity import add_replica, missing_replicas
from ilm.config import Settings
from ilm.errors import IlmError, StorageError
from ilm.lifecycle.move import put_verified
from ilm.models import CopyState
from ilm.storage import Tier

__all__ = ["Replicator", "ReplicaReport"]

log = logging.getLogger("ilm.fixity")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ReplicaReport:
    written: int = 0
    problems: list[str] = field(default_factory=list)


class Replicator:
    """Writes and catches up the replica copies the configuration asks for."""

    def __init__(self, settings: Settings, catalog: Catalog, tiers: Callable[[str], Tier]) -> None:
        self._settings = settings
        self._catalog = catalog
        self._tiers = tiers
        self.wanted = {n: list(t.replicas) for n, t in settings.tiers.items() if t.replicas}

    def _copy(self, c: InstanceCopy, data: bytes, replica: str) -> None:
        put_verified(c, data, c.tier, self._tiers(replica))
        with self._catalog.write() as conn:
            add_replica(conn, c.sop_uid, replica, c.key, c.size, c.sha256, _now())

    def on_stored(self, tier: str, key: str, data: bytes, sha256: str, sop_uid: str) -> None:
        """After ingest catalogued a new instance on ``tier``: write its replicas.
        A failure is logged and left for ``fill``; the ingest itself succeeded."""
        for replica in self.wanted.get(tier, ()):
            try:
                c = InstanceCopy(0, sop_uid, sha256, len(data), tier, key, CopyState.VERIFIED.value)
                self._copy(c, data, replica)
            except (StorageError, IlmError) as exc:
                log.warning("replica of %s on tier %r not written yet (ilm verify or the scrub writes it): %s",
                            sop_uid, replica, exc)
            except Exception as exc:  # the catalog: the same, the primary copy is safe
                log.warning("replica of %s on tier %r not recorded yet: %s", sop_uid, replica, exc)

    def fill(self, *, study_uid: str | None = None, tiers: set[str] | None = None, batch: int = 500) -> ReplicaReport:
        """Write every replica copy that is missing (a replica tier that was down at
        ingest, a study moved to a tier with replicas, replicas newly configured)."""
        report = ReplicaReport()
        wanted = {t: r for t, r in self.wanted.items() if tiers is None or t in tiers}
        failed: set[tuple[int, str]] = set()
        while wanted:
            with self._catalog.read() as conn:
                todo = [t for t in missing_replicas(conn, wanted, study_uid=study_uid, limit=batch + len(failed))
                        if (t.copy.instance_pk, t.replica) not in failed]
            if not todo:
                break
            for t in todo:
                c = t.copy
                try:
                    data = self._tiers(c.tier).get(c.key)
                    if hashlib.sha256(data).hexdigest() != c.sha256:
                        raise IlmError(f"tier {c.tier!r}: {c.key} does not match its catalog SHA-256 "
                                       "(ilm verify marks and repairs it)")
                    self._copy(c, data, t.replica)
                    report.written += 1
                except (StorageError, IlmError) as exc:
                    failed.add((c.instance_pk, t.replica))
                    report.problems.append(f"replica of {c.sop_uid} on {t.replica!r}: {exc}")
        if report.written:
            log.info("replicas: wrote %d missing replica copies", report.written)
        return report
