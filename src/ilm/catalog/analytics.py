"""Archive analytics: SQL aggregates over the catalog (GROUP BY in the database).

Each function runs one or two grouped queries over the active studies and
returns plain rows; shaping them into a report is :mod:`ilm.cost.shaping`.
A study's age is counted from its StudyDate, or from when it was received
when it has none. Works the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import TIMESTAMP, Date, and_, extract, case, cast, func, literal, or_, select
from sqlalchemy.engine import Connection

from ilm.catalog.schema import access_log, series, studies

__all__ = [
    "Totals", "totals", "by_modality", "by_modalities_in_study", "by_year", "by_tier", "by_size",
    "growth_by_month", "reads_by_age", "held_by_age", "never_read_after", "patients_by_study_count",
    "largest_studies", "sample_study_uids", "SIZE_BUCKETS", "DAYS_PER_MONTH",
]

DAYS_PER_MONTH = 365.25 / 12
# Upper bounds (bytes, exclusive) of the study size buckets; the last bucket is open.
SIZE_BUCKETS: tuple[int, ...] = (10**7, 10**8, 10**9, 10**10)
_ACTIVE = studies.c.state == "active"


@dataclass(frozen=True, slots=True)
class Totals:
    studies: int
    instances: int
    size_bytes: int
    patients: int


def _day(conn: Connection, expr: Any) -> Any:
    """A day number (fractional, UTC) of a date column (midnight) or a timestamp column."""
    if conn.dialect.name == "postgresql":
        if isinstance(getattr(expr, "type", None), Date):
            expr = cast(expr, TIMESTAMP())  # midnight, no time zone: the same day number as SQLite's
        return extract("epoch", expr) / 86400.0
    return func.julianday(expr)


def _day_of(conn: Connection, value: date | datetime) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        text = value.isoformat(" ")
    else:
        text = value.isoformat()
    if conn.dialect.name == "postgresql":
        return extract("epoch", cast(literal(text), TIMESTAMP())) / 86400.0
    return func.julianday(literal(text))


def _study_day(conn: Connection) -> Any:
    return func.coalesce(_day(conn, studies.c.study_date), _day(conn, studies.c.received_at))


def _bucket(expr: Any, bounds: Sequence[float]) -> Any:
    return case(*[(expr < b, i) for i, b in enumerate(bounds)], else_=len(bounds))


def _age_bucket(age_days: Any, bounds_months: Sequence[int]) -> Any:
    return _bucket(age_days, [m * DAYS_PER_MONTH for m in bounds_months])


def totals(conn: Connection) -> Totals:
    r = conn.execute(select(func.count(), func.coalesce(func.sum(studies.c.instance_count), 0),
                            func.coalesce(func.sum(studies.c.size_bytes), 0),
                            func.count(func.distinct(studies.c.patient_pk))).where(_ACTIVE)).one()
    return Totals(int(r[0]), int(r[1]), int(r[2]), int(r[3]))


def by_modality(conn: Connection) -> list[tuple[str, int, int, int]]:
    """Per series modality: series, instances, bytes (a study's bytes split by its series)."""
    rows = conn.execute(
        select(series.c.modality, func.count(), func.coalesce(func.sum(series.c.instance_count), 0),
               func.coalesce(func.sum(series.c.size_bytes), 0))
        .join(studies, studies.c.id == series.c.study_pk).where(_ACTIVE).group_by(series.c.modality))
    return [(m or "", int(n), int(i), int(b)) for m, n, i, b in rows]


def by_modalities_in_study(conn: Connection) -> list[tuple[str, int]]:
    """Studies per ModalitiesInStudy value (backslash-joined)."""
    rows = conn.execute(select(studies.c.modalities, func.count()).where(_ACTIVE).group_by(studies.c.modalities))
    return [(m or "", int(n)) for m, n in rows]


def _grouped(conn: Connection, key: Any) -> list[tuple[Any, int, int, int]]:
    k = key.label("k")
    rows = conn.execute(
        select(k, func.count(), func.coalesce(func.sum(studies.c.instance_count), 0),
               func.coalesce(func.sum(studies.c.size_bytes), 0)).where(_ACTIVE).group_by(k).order_by(k))
    return [(key_, int(n), int(i), int(b)) for key_, n, i, b in rows]


def by_year(conn: Connection) -> list[tuple[str, int, int, int]]:
    """Per study year: studies, instances, bytes; '' for studies without a date."""
    if conn.dialect.name == "postgresql":
        year: Any = func.to_char(studies.c.study_date, "YYYY")
    else:
        year = func.strftime("%Y", studies.c.study_date)
    return [(y or "", n, i, b) for y, n, i, b in _grouped(conn, year)]


def by_tier(conn: Connection) -> list[tuple[str, int, int, int]]:
    """Per value of studies.tiers (backslash-joined when a study is on several): studies, instances, bytes."""
    return [(t or "", n, i, b) for t, n, i, b in _grouped(conn, studies.c.tiers)]


def by_size(conn: Connection) -> list[tuple[int, int, int, int]]:
    """Per size bucket (index into SIZE_BUCKETS, the last open): studies, instances, bytes."""
    return [(int(k), n, i, b) for k, n, i, b in _grouped(conn, _bucket(studies.c.size_bytes, SIZE_BUCKETS))]


def growth_by_month(conn: Connection) -> list[tuple[str, int, int]]:
    """Per month received (YYYY-MM): studies and bytes of the studies still active."""
    if conn.dialect.name == "postgresql":
        month: Any = func.to_char(studies.c.received_at, "YYYY-MM")
    else:
        month = func.strftime("%Y-%m", studies.c.received_at)
    return [(str(m), n, b) for m, n, _i, b in _grouped(conn, month)]


def reads_by_age(conn: Connection, since: datetime, bounds_months: Sequence[int]) -> list[tuple[int, int, int]]:
    """Reads logged since ``since``, per study age at the read: bucket, reads, instances read."""
    age = _day(conn, access_log.c.at) - _study_day(conn)
    b = _age_bucket(age, bounds_months).label("b")
    rows = conn.execute(
        select(b, func.count(), func.coalesce(func.sum(access_log.c.instances), 0))
        .select_from(access_log.join(studies, studies.c.study_uid == access_log.c.study_uid))
        .where(access_log.c.at >= since).group_by(b))
    return [(int(k), int(n), int(i)) for k, n, i in rows]


def held_by_age(conn: Connection, today: date, bounds_months: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Active studies per age bucket today: bucket, studies, instances, bytes."""
    age = _day_of(conn, today) - _study_day(conn)
    return [(int(k), n, i, b) for k, n, i, b in _grouped(conn, _age_bucket(age, bounds_months))]


def never_read_after(conn: Connection, days: Sequence[int], now: datetime) -> list[tuple[int, int, int]]:
    """For each N: active studies older than N days, and those of them nobody read after their first N days."""
    out = []
    start = _study_day(conn)
    for n in days:
        old = (_day_of(conn, now) - start) > n
        unread = or_(studies.c.last_accessed_at.is_(None), (_day(conn, studies.c.last_accessed_at) - start) <= n)
        r = conn.execute(select(func.count(), func.coalesce(func.sum(case((unread, 1), else_=0)), 0))
                         .where(_ACTIVE, old)).one()
        out.append((n, int(r[0]), int(r[1])))
    return out


def patients_by_study_count(conn: Connection) -> list[tuple[int, int]]:
    """How many patients have 1, 2, 3 ... active studies: (studies per patient, patients)."""
    per = select(studies.c.patient_pk, func.count().label("n")).where(_ACTIVE).group_by(studies.c.patient_pk).subquery()
    rows = conn.execute(select(per.c.n, func.count()).group_by(per.c.n).order_by(per.c.n))
    return [(int(n), int(p)) for n, p in rows]


def largest_studies(conn: Connection, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(studies.c.study_uid, studies.c.study_date, studies.c.modalities, studies.c.description,
               studies.c.instance_count, studies.c.size_bytes, studies.c.tiers)
        .where(_ACTIVE).order_by(studies.c.size_bytes.desc(), studies.c.id).limit(limit))
    return [dict(study_uid=r.study_uid, study_date=r.study_date, modalities=r.modalities, description=r.description,
                 instances=int(r.instance_count), size_bytes=int(r.size_bytes), tiers=r.tiers) for r in rows]


def sample_study_uids(conn: Connection, limit: int, *, received_since: datetime | None = None) -> list[str]:
    """About ``limit`` active studies on a tier, spread evenly over the catalog (every k-th by id)."""
    where = and_(_ACTIVE, studies.c.tiers != "")
    if received_since is not None:
        where = and_(where, studies.c.received_at >= received_since)
    n = conn.execute(select(func.count()).where(where)).scalar_one()
    if n == 0 or limit <= 0:
        return []
    step = max(1, -(-int(n) // limit))
    q = select(studies.c.study_uid).where(where)
    if step > 1:
        q = q.where(studies.c.id % step == 0)
    return [u for (u,) in conn.execute(q.order_by(studies.c.id).limit(limit))]
