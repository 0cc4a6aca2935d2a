"""Catalog side of watermark runs: a tier's studies, least recently read first, and their bytes there."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, exists, func, select
from sqlalchemy.engine import Connection

from ilm.catalog.schema import instances, locations, studies
from ilm.models import CopyState

__all__ = ["TierStudy", "copies_only_here", "study_on_tier", "study_state", "tier_studies_lru"]

PAGE = 2000


def _aware(t: datetime | None) -> datetime | None:
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return t


@dataclass(frozen=True, slots=True)
class TierStudy:
    study_uid: str
    tiers: tuple[str, ...]
    size_bytes: int
    instance_count: int
    last_read: datetime  # last access, else receipt
    last_accessed_at: datetime | None


_LAST_READ = func.coalesce(studies.c.last_accessed_at, studies.c.received_at)


def tier_studies_lru(conn: Connection, tier: str) -> Iterator[TierStudy]:
    """Active studies with a verified copy on ``tier``, least recently read first
    (ties by Study Instance UID), read page by page so a caller may stop early."""
    q = (
        select(studies.c.study_uid, studies.c.tiers, studies.c.size_bytes, studies.c.instance_count,
               studies.c.last_accessed_at, studies.c.received_at)
        .where(studies.c.state == "active", studies.c.tiers.contains(tier, autoescape=True))
        .order_by(_LAST_READ, studies.c.study_uid)
    )
    offset = 0
    while True:
        rows = conn.execute(q.limit(PAGE).offset(offset)).all()
        for r in rows:
            tiers = tuple(t for t in (r[1] or "").split("\\") if t)
            if tier not in tiers:
                continue  # "hot" inside "hot2"
            accessed = _aware(r[4])
            received = _aware(r[5])
            assert received is not None
            yield TierStudy(r[0], tiers, int(r[2]), int(r[3]), accessed or received, accessed)
        if len(rows) < PAGE:
            return
        offset += PAGE


def study_on_tier(conn: Connection, study_uid: str, tier: str) -> tuple[int, int]:
    """(bytes, instances) of a study's verified copies on ``tier``."""
    r = conn.execute(
        select(func.coalesce(func.sum(locations.c.size_bytes), 0), func.count())
        .join(instances, instances.c.id == locations.c.instance_pk)
        .join(studies, studies.c.id == instances.c.study_pk)
        .where(studies.c.study_uid == study_uid, locations.c.tier == tier,
               locations.c.state == CopyState.VERIFIED.value)
    ).one()
    return int(r[0]), int(r[1])


def copies_only_here(conn: Connection, study_uid: str, tier: str) -> int:
    """How many of the study's verified copies on ``tier`` have no verified copy on another tier."""
    other = locations.alias()
    return int(conn.execute(
        select(func.count())
        .select_from(locations)
        .join(instances, instances.c.id == locations.c.instance_pk)
        .join(studies, studies.c.id == instances.c.study_pk)
        .where(studies.c.study_uid == study_uid, locations.c.tier == tier,
               locations.c.state == CopyState.VERIFIED.value,
               ~exists(select(other.c.id).where(and_(other.c.instance_pk == locations.c.instance_pk,
                                                     other.c.tier != tier,
                                                     other.c.state == CopyState.VERIFIED.value))))
    ).scalar_one())


def study_state(conn: Connection, study_uid: str) -> TierStudy | None:
    """The study as a watermark plan fingerprints it; None when it is not active."""
    r = conn.execute(
        select(studies.c.study_uid, studies.c.tiers, studies.c.size_bytes, studies.c.instance_count,
               studies.c.last_accessed_at, studies.c.received_at)
        .where(studies.c.study_uid == study_uid, studies.c.state == "active")
    ).first()
    if r is None:
        return None
    accessed = _aware(r[4])
    received = _aware(r[5])
    assert received is not None
    return TierStudy(r[0], tuple(t for t in (r[1] or "").split("\\") if t), int(r[2]), int(r[3]),
                     accessed or received, accessed)
