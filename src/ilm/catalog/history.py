"""Storage by tier over time: the snapshot tables (``tier_history``, ``received_history``).

A snapshot counts the active studies per tier (one grouped pass over the
studies; the few studies in the middle of a move counted from their verified
copies) and what arrived per day since the last recorded day. The backfill
reads what the catalog still knows of the past: the month each study was
received, the month it was quarantined, and the moves journal (from which tier
to which, in which month). Shaping the rows is :mod:`ilm.cost.history`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, case, cast, delete, distinct, func, insert, select
from sqlalchemy.engine import Connection

from ilm.catalog.plans import _MULTI
from ilm.catalog.schema import instances, locations, moves, received_history, studies, tier_history

__all__ = [
    "TierCount", "DayCount", "stored_by_tier", "received_by_day", "has_history", "last_recorded_day",
    "write_tiers", "write_received", "tier_rows", "received_rows", "study_spans", "move_spans",
]

_ACTIVE = studies.c.state == "active"


@dataclass(frozen=True, slots=True)
class TierCount:
    tier: str
    studies: int
    instances: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class DayCount:
    day: date
    studies: int
    instances: int
    size_bytes: int
    reconstructed: bool = False


def _as_date(v: Any) -> date:
    return v if isinstance(v, date) else date.fromisoformat(str(v)[:10])


def _day_of(conn: Connection, col: Any) -> Any:
    """The UTC day of a timestamp column."""
    if conn.dialect.name == "postgresql":
        return cast(func.timezone("UTC", col), Date)
    return func.substr(col, 1, 10)  # ISO text: the date is its start


def _month_of(conn: Connection, col: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", col), "YYYY-MM")
    return func.substr(col, 1, 7)


def stored_by_tier(conn: Connection) -> list[TierCount]:
    """Active studies per tier now: studies held on one tier counted from the studies table; those
    on several (in the middle of a move) on each tier where they have verified copies."""
    out: dict[str, list[int]] = {}
    rows = conn.execute(
        select(studies.c.tiers, func.count(), func.coalesce(func.sum(studies.c.instance_count), 0),
               func.coalesce(func.sum(studies.c.size_bytes), 0))
        .where(_ACTIVE, studies.c.tiers != "").group_by(studies.c.tiers))
    multi = False
    for tiers, n, i, b in rows:
        if "\\" in tiers:
            multi = True
            continue
        out[tiers] = [int(n), int(i), int(b)]
    if multi:
        q = (select(locations.c.tier, func.count(distinct(studies.c.id)), func.count(), func.sum(locations.c.size_bytes))
             .select_from(studies.join(instances, instances.c.study_pk == studies.c.id)
                          .join(locations, locations.c.instance_pk == instances.c.id))
             .where(_ACTIVE, _MULTI, locations.c.state == "verified").group_by(locations.c.tier))
        for tier, n, i, b in conn.execute(q):
            acc = out.setdefault(tier, [0, 0, 0])
            acc[0] += int(n)
            acc[1] += int(i)
            acc[2] += int(b or 0)
    return [TierCount(t, *v) for t, v in sorted(out.items())]


def received_by_day(conn: Connection, since: datetime | None = None) -> list[DayCount]:
    """Studies still in the catalog (any state) per UTC day received, since ``since`` (or ever)."""
    day = _day_of(conn, studies.c.received_at).label("d")
    q = select(day, func.count(), func.coalesce(func.sum(studies.c.instance_count), 0),
               func.coalesce(func.sum(studies.c.size_bytes), 0)).group_by(day)
    if since is not None:
        q = q.where(studies.c.received_at >= since)
    return sorted((DayCount(_as_date(d), int(n), int(i), int(b)) for d, n, i, b in conn.execute(q)), key=lambda c: c.day)


def has_history(conn: Connection) -> bool:
    return conn.execute(select(tier_history.c.day).limit(1)).first() is not None


def last_recorded_day(conn: Connection) -> date | None:
    """The last day a snapshot recorded what arrived (not a reconstructed one)."""
    v = conn.execute(select(func.max(received_history.c.day)).where(received_history.c.reconstructed.is_(False))).scalar()
    return _as_date(v) if v is not None else None


def write_tiers(conn: Connection, day: date, counts: Iterable[TierCount], now: datetime, *,
                reconstructed: bool = False) -> None:
    """The day's rows replaced by ``counts`` (a later snapshot of the same day wins)."""
    conn.execute(delete(tier_history).where(tier_history.c.day == day))
    rows = [{"day": day, "tier": c.tier, "studies": c.studies, "instances": c.instances, "size_bytes": c.size_bytes,
             "reconstructed": reconstructed, "recorded_at": now} for c in counts]
    if rows:
        conn.execute(insert(tier_history), rows)


def write_received(conn: Connection, days: Sequence[DayCount], now: datetime) -> None:
    """Rows of these days replaced (what arrived on a day is counted again until the day is over)."""
    if not days:
        return
    for i in range(0, len(days), 500):
        chunk = days[i:i + 500]
        conn.execute(delete(received_history).where(received_history.c.day.in_([d.day for d in chunk])))
        conn.execute(insert(received_history), [
            {"day": d.day, "studies": d.studies, "instances": d.instances, "size_bytes": d.size_bytes,
             "reconstructed": d.reconstructed, "recorded_at": now} for d in chunk])


def tier_rows(conn: Connection, since: date | None = None) -> list[tuple[date, str, int, int, int, bool]]:
    q = select(tier_history.c.day, tier_history.c.tier, tier_history.c.studies, tier_history.c.instances,
               tier_history.c.size_bytes, tier_history.c.reconstructed).order_by(tier_history.c.day, tier_history.c.tier)
    if since is not None:
        q = q.where(tier_history.c.day >= since)
    return [(_as_date(d), str(t), int(n), int(i), int(b), bool(r)) for d, t, n, i, b, r in conn.execute(q)]


def received_rows(conn: Connection, since: date | None = None) -> list[DayCount]:
    q = select(received_history.c.day, received_history.c.studies, received_history.c.instances,
               received_history.c.size_bytes, received_history.c.reconstructed).order_by(received_history.c.day)
    if since is not None:
        q = q.where(received_history.c.day >= since)
    return [DayCount(_as_date(d), int(n), int(i), int(b), bool(r)) for d, n, i, b, r in conn.execute(q)]


def study_spans(conn: Connection) -> list[tuple[str, str, str, int, int, int]]:
    """Studies still in the catalog grouped by (tiers now, month received, month quarantined or
    '' while active): studies, instances, bytes. Purged studies are gone and not counted."""
    end = case((_ACTIVE, ""), else_=func.coalesce(_month_of(conn, studies.c.quarantined_at), "")).label("e")
    start = _month_of(conn, studies.c.received_at).label("r")
    q = (select(studies.c.tiers, start, end, func.count(), func.coalesce(func.sum(studies.c.instance_count), 0),
                func.coalesce(func.sum(studies.c.size_bytes), 0))
         .where(studies.c.state.in_(("active", "quarantined"))).group_by(studies.c.tiers, start, end))
    return [(str(t or ""), str(r), str(e or ""), int(n), int(i), int(b)) for t, r, e, n, i, b in conn.execute(q)]


def move_spans(conn: Connection) -> list[tuple[str, str, str, str, int, int, int]]:
    """Done moves of the moves journal grouped by (from tier, to tier, month moved, month the study
    was received): studies, instances, bytes."""
    moved = _month_of(conn, moves.c.updated_at).label("m")
    start = _month_of(conn, studies.c.received_at).label("r")
    q = (select(moves.c.src_tier, moves.c.dst_tier, moved, start, func.count(distinct(studies.c.id)), func.count(),
                func.coalesce(func.sum(instances.c.size_bytes), 0))
         .select_from(moves.join(instances, instances.c.id == moves.c.instance_pk)
                      .join(studies, studies.c.id == instances.c.study_pk))
         .where(moves.c.state == "done", studies.c.state.in_(("active", "quarantined")))
         .group_by(moves.c.src_tier, moves.c.dst_tier, moved, start))
    return [(str(s), str(d), str(m), str(r), int(n), int(i), int(b)) for s, d, m, r, n, i, b in conn.execute(q)]
