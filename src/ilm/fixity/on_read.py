"""A read that finds a copy's bytes do not match the catalog's SHA-256.

Every read through the service (WADO-RS, C-GET, C-MOVE, export) checks what it
read against the catalog. A mismatch is what a fixity check would find, so it
is recorded the same way: the copy is marked 'bad' (readers stop using it),
the audit trail gets a ``fixity.bad`` entry, and the next ``ilm verify`` or
scrub repairs it from a verified copy. The read itself goes on with the next
verified copy (a replica, another tier), so a reader gets the right bytes
whenever any copy has them and never gets the wrong ones.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.fixity import CheckedCopy, copy_on_tier, record_checks
from ilm.models import CopyState

__all__ = ["mark_bad_on_read"]

log = logging.getLogger(__name__)


def mark_bad_on_read(catalog: Catalog, sop_uid: str, tier: str, problem: str, *, actor: str = "ilm-read") -> bool:
    """Mark the copy of ``sop_uid`` on ``tier`` bad (and audit it); True when it was verified until now."""
    now = datetime.now(timezone.utc)
    with catalog.write() as conn:
        copy = copy_on_tier(conn, sop_uid, tier)
        if copy is None or copy.state != CopyState.VERIFIED.value:
            return False
        newly = record_checks(conn, [CheckedCopy(copy, CopyState.BAD.value, problem)], now)
        for r in newly:
            append_audit(conn, at=now, actor=actor, action="fixity.bad", study_uid=copy.study_uid,
                         detail={"tier": tier, "key": copy.key, "sop_uid": sop_uid, "why": problem,
                                 "found_by": "read"})
    log.warning("fixity: a read found the copy of %s on tier %r bad (marked; repaired by the next verify): %s",
                sop_uid, tier, problem)
    return bool(newly)
