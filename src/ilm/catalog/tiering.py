"""Catalog queries of access-based tiering: cooling candidates, where a study is, a patient's priors.

The meaning lives in :mod:`ilm.policy.tiering`; these queries only narrow
the catalog down to the studies that could qualify, and return the facts the
pure functions decide on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Connection

from ilm.catalog.retention import list_holds
from ilm.catalog.schema import instances, locations, studies
from ilm.models import CopyState
from ilm.policy.facts import Hold, HoldScope, StudyFacts, split_multi

__all__ = ["PatientStudies", "StudyPlace", "cooling_candidates", "patient_studies", "study_place", "tier_arrivals"]

_CHUNK = 500
_PAGE = 10_000


def _study_holds(conn: Connection) -> dict[str, tuple[Hold, ...]]:
    out: dict[str, list[Hold]] = {}
    for h in list_holds(conn):
        if h.scope == "study":
            out.setdefault(h.target, []).append(
                Hold(scope=HoldScope.STUDY, reason=h.reason, placed_by=h.created_by, placed_at=h.created_at))
    return {k: tuple(v) for k, v in out.items()}


def tier_arrivals(conn: Connection, study_uids: list[str], tier: str) -> dict[str, datetime]:
    """When each study's newest verified copy on ``tier`` was made (studies without copy rows are left out)."""
    out: dict[str, datetime] = {}
    for i in range(0, len(study_uids), _CHUNK):
        chunk = study_uids[i:i + _CHUNK]
        q = (select(studies.c.study_uid, func.max(locations.c.created_at))
             .join(instances, instances.c.study_pk == studies.c.id)
             .join(locations, locations.c.instance_pk == instances.c.id)
             .where(studies.c.study_uid.in_(chunk), locations.c.tier == tier,
                    locations.c.state == CopyState.VERIFIED.value)
             .group_by(studies.c.study_uid))
        for uid, at in conn.execute(q):
            if at is not None:
                out[uid] = at
    return out


def cooling_candidates(conn: Connection, tier: str, cutoff: datetime) -> Iterator[tuple[StudyFacts, datetime | None]]:
    """Active studies held on ``tier`` alone, neither received nor read since ``cutoff``,
    with the time their copies arrived on the tier.

    The facts are those :func:`ilm.lifecycle.plan.fingerprint` and the cooling
    decision read (counts, size, receipt, last read, tiers, holds on the study).
    """
    holds = _study_holds(conn)
    s = studies.c
    q = (select(s.id, s.study_uid, s.instance_count, s.size_bytes, s.received_at, s.last_accessed_at, s.tiers)
         .where(s.state == "active", s.tiers == tier, s.received_at < cutoff,
                or_(s.last_accessed_at.is_(None), s.last_accessed_at < cutoff))
         .order_by(s.id).limit(_PAGE))
    last = 0
    while True:  # pages by id: no cursor stays open while the copies are looked up
        rows = conn.execute(q.where(s.id > last)).fetchall()
        if not rows:
            return
        last = rows[-1].id
        for i in range(0, len(rows), _CHUNK):
            batch = [StudyFacts(
                study_uid=r.study_uid, instance_count=int(r.instance_count), size_bytes=int(r.size_bytes),
                received_at=r.received_at, last_accessed_at=r.last_accessed_at, tiers=split_multi(r.tiers),
                holds=holds.get(r.study_uid, ()),
            ) for r in rows[i:i + _CHUNK]]
            arrived = tier_arrivals(conn, [f.study_uid for f in batch], tier)
            for f in batch:
                yield f, arrived.get(f.study_uid)


@dataclass(frozen=True, slots=True)
class StudyPlace:
    """Where an active study's verified copies are, and how big it is."""

    study_uid: str
    tiers: tuple[str, ...]
    size_bytes: int
    instance_count: int


def study_place(conn: Connection, study_uid: str) -> StudyPlace | None:
    """None unless the study is active."""
    r = conn.execute(select(studies.c.tiers, studies.c.size_bytes, studies.c.instance_count)
                     .where(studies.c.study_uid == study_uid, studies.c.state == "active")).first()
    if r is None:
        return None
    return StudyPlace(study_uid, split_multi(r.tiers), int(r.size_bytes), int(r.instance_count))


@dataclass(frozen=True, slots=True)
class PatientStudies:
    """A study and the patient's other active studies (dates, modalities, body parts, tiers)."""

    study: StudyFacts
    others: list[StudyFacts]


def _lite(r: Any) -> StudyFacts:
    return StudyFacts(
        study_uid=r.study_uid, study_date=r.study_date, modalities=split_multi(r.modalities),
        body_parts=split_multi(r.body_parts), tiers=split_multi(r.tiers), size_bytes=int(r.size_bytes),
        instance_count=int(r.instance_count), received_at=r.received_at, last_accessed_at=r.last_accessed_at,
    )


def patient_studies(conn: Connection, study_uid: str) -> PatientStudies | None:
    """The study (active or not: None if unknown) and every other active study of its patient."""
    s = studies.c
    cols = (s.study_uid, s.study_date, s.modalities, s.body_parts, s.tiers, s.size_bytes, s.instance_count,
            s.received_at, s.last_accessed_at)
    row = conn.execute(select(s.patient_pk, *cols).where(s.study_uid == study_uid)).first()
    if row is None:
        return None
    others = [_lite(r) for r in conn.execute(
        select(*cols).where(s.patient_pk == row.patient_pk, s.state == "active", s.study_uid != study_uid))]
    return PatientStudies(_lite(row), others)
