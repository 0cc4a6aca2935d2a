"""The audit trail's pure part: what an entry is and how the chain is checked.

Every plan, apply, action, hold, restore and purge appends one entry. Each
entry's hash is SHA-256 over the previous entry's hash and the entry's
canonical JSON, so editing, inserting or removing any entry breaks every hash
after it; ``verify_chain`` says where. Storage lives in ``ilm.catalog.audit``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = ["AuditEntry", "GENESIS", "entry_hash", "verify_chain", "ChainBreak"]

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    study_uid: str | None = None
    plan_id: str | None = None
    rule_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    prev_hash: str = ""
    hash: str = ""


def _utc_iso(at: datetime) -> str:
    if at.tzinfo is None:  # SQLite returns naive datetimes; ilm writes UTC only
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).isoformat(timespec="microseconds")


def canonical_detail(detail: dict[str, Any]) -> str:
    return json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)


def entry_hash(prev_hash: str, e: AuditEntry) -> str:
    body = json.dumps(
        [_utc_iso(e.at), e.actor, e.action, e.study_uid, e.plan_id, e.rule_id, canonical_detail(e.detail)],
        separators=(",", ":"),
    )
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainBreak:
    entry_id: int | None
    problem: str


def verify_chain(entries: Iterable[AuditEntry]) -> list[ChainBreak]:
    """Check entries in id order; return every break found (empty when intact)."""
    breaks: list[ChainBreak] = []
    prev = GENESIS
    last_id: int | None = None
    for e in entries:
        if last_id is not None and e.id is not None and e.id != last_id + 1:
            breaks.append(ChainBreak(e.id, f"entries {last_id + 1}..{e.id - 1} are missing"))
        if e.prev_hash != prev:
            breaks.append(ChainBreak(e.id, "does not follow the previous entry (removed or reordered entry)"))
        if entry_hash(e.prev_hash, e) != e.hash:
            breaks.append(ChainBreak(e.id, "content changed after it was written"))
        prev = e.hash
        last_id = e.id
    return breaks
