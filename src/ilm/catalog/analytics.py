"""Archive analytics: SQL aggregates over the catalog (GROUP BY in the database).

:func:`study_groups` makes one pass over the active studies for every
dimension at once; the access log, the patients and the largest studies are
one query each. Shaping the rows into a report is :mod:`ilm.cost.shaping`.
A study's age is counted from its StudyDate, or from the (UTC) day it was
received when it has none. Works the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import TIMESTAMP, Date, and_, extract, case, cast, func, literal, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.selectable import Join

from ilm.catalog.plans import _MULTI, _multi_tier_bytes
from ilm.catalog.schema import access_log, studies

__all__ = [
    "StudyGroup", "study_groups", "received_by_month", "held_by_age", "reads_by_age", "patients_by_study_count", "largest_studies",
    "sample_study_uids", "SIZE_BUCKETS", "DAYS_PER_MONTH", "CostGroup", "cost_groups",
]

DAYS_PER_MONTH = 365.25 / 12
# Upper bounds (bytes, exclusive) of the study size buckets; the last bucket is open.
SIZE_BUCKETS: tuple[int, ...] = (10**7, 10**8, 10**9, 10**10)
_ACTIVE = studies.c.state == "active"
_JULIAN_EPOCH = 2440587.5  # julianday('1970-01-01')


def _day(conn: Connection, expr: Any) -> Any:
    """A day number (fractional, UTC) of a date column (midnight) or a timestamp column."""
    if conn.dialect.name == "postgresql":
        if isinstance(getattr(expr, "type", None), Date):
            expr = cast(expr, TIMESTAMP())  # midnight, no time zone: the same day number as SQLite's
        return extract("epoch", expr) / 86400.0
    return func.julianday(expr)


def _day_of(conn: Connection, value: date | datetime) -> Any:
    """The day number of a value known in Python, as the literal :func:`_day` would compute."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
    else:
        value = datetime.combine(value, datetime.min.time())
    days = (value - datetime(1970, 1, 1)).total_seconds() / 86400
    return literal(days if conn.dialect.name == "postgresql" else days + _JULIAN_EPOCH)


def _study_date(conn: Connection) -> Any:
    """The day a study's age counts from: its StudyDate, else the (UTC) day it was received."""
    if conn.dialect.name == "postgresql":
        received: Any = cast(func.timezone("UTC", studies.c.received_at), Date)
    else:
        received = func.substr(studies.c.received_at, 1, 10)  # ISO text: the date is its start
    return func.coalesce(studies.c.study_date, received)


def _study_day(conn: Connection) -> Any:
    d = _study_date(conn)
    if conn.dialect.name == "postgresql":
        return extract("epoch", cast(d, TIMESTAMP())) / 86400.0
    return func.julianday(d)


def _bucket(expr: Any, bounds: Sequence[float]) -> Any:
    return case(*[(expr < b, i) for i, b in enumerate(bounds)], else_=len(bounds))


def _age_bucket(age_days: Any, bounds_months: Sequence[int]) -> Any:
    return _bucket(age_days, [m * DAYS_PER_MONTH for m in bounds_months])


@dataclass(frozen=True, slots=True)
class StudyGroup:
    """Active studies that share a study year, month received, size bucket, age bucket, tiers and
    modalities, with their counts and, per N of ``never_read_days``, those older than N days and
    those of them nobody read after their first N days."""

    year: str          # '' without a study date
    month: str         # YYYY-MM received
    size_bucket: int   # index into SIZE_BUCKETS (the last open)
    age_bucket: int    # index into the age bounds (the last open)
    tiers: str
    modalities: str
    studies: int
    instances: int
    size_bytes: int
    older: tuple[int, ...]
    unread: tuple[int, ...]


def study_groups(conn: Connection, *, today: date, age_bounds_months: Sequence[int],
                 never_read_days: Sequence[int]) -> list[StudyGroup]:
    """One pass over the active studies, grouped by every dimension the stats need.

    The per-row values (dates as day numbers, buckets) are computed once in a subquery
    that the database does not flatten (OFFSET 0), then grouped; the marginals (by year,
    by tier, ...) are summed from the groups by the caller.
    """
    pg = conn.dialect.name == "postgresql"
    # SQLite keeps dates and times as ISO text: the year and month are its first characters.
    year = func.to_char(studies.c.study_date, "YYYY") if pg else func.substr(studies.c.study_date, 1, 4)
    month = func.to_char(studies.c.received_at, "YYYY-MM") if pg else func.substr(studies.c.received_at, 1, 7)
    start = _study_day(conn)
    rows = select(
        year.label("y"), month.label("m"), _bucket(studies.c.size_bytes, SIZE_BUCKETS).label("sb"),
        (_day_of(conn, today) - start).label("age"), (_day(conn, studies.c.last_accessed_at) - start).label("read"),
        studies.c.tiers, studies.c.modalities, studies.c.instance_count, studies.c.size_bytes,
    ).where(_ACTIVE).offset(0).subquery()
    ab = _age_bucket(rows.c.age, age_bounds_months).label("ab")
    flags = []
    for n in never_read_days:
        older = rows.c.age > n
        flags.append(func.sum(case((older, 1), else_=0)))
        flags.append(func.sum(case((and_(older, or_(rows.c.read.is_(None), rows.c.read <= n)), 1), else_=0)))
    q = (select(rows.c.y, rows.c.m, rows.c.sb, ab, rows.c.tiers, rows.c.modalities, func.count(),
                func.sum(rows.c.instance_count), func.sum(rows.c.size_bytes), *flags)
         .group_by(rows.c.y, rows.c.m, rows.c.sb, ab, rows.c.tiers, rows.c.modalities))
    k = len(never_read_days)
    return [StudyGroup(r[0] or "", r[1] or "", int(r[2]), int(r[3]), r[4] or "", r[5] or "", int(r[6]), int(r[7]),
                       int(r[8]), tuple(int(r[9 + 2 * i]) for i in range(k)),
                       tuple(int(r[10 + 2 * i]) for i in range(k))) for r in conn.execute(q)]


def received_by_month(conn: Connection, since: datetime) -> list[tuple[str, int, int]]:
    """Active studies received since ``since``, per month received (YYYY-MM): studies, bytes."""
    pg = conn.dialect.name == "postgresql"
    month = (func.to_char(studies.c.received_at, "YYYY-MM") if pg else func.substr(studies.c.received_at, 1, 7)
             ).label("m")
    rows = conn.execute(select(month, func.count(), func.coalesce(func.sum(studies.c.size_bytes), 0))
                        .where(_ACTIVE, studies.c.received_at >= since).group_by(month))
    return [(str(m), int(n), int(b)) for m, n, b in rows]


def held_by_age(conn: Connection, today: date, bounds_months: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Active studies per age bucket today: (bucket, studies, instances, bytes), from one pass of
    conditional sums (no grouping, nothing to sort) that compare the study's day with each
    bound's day (no date arithmetic per row). Ages as in :func:`study_groups`."""
    cols: list[Any] = [func.count(), func.coalesce(func.sum(studies.c.instance_count), 0),
                       func.coalesce(func.sum(studies.c.size_bytes), 0)]
    for young in _younger_than(conn, today, bounds_months):
        cols += [func.coalesce(func.sum(case((young, 1), else_=0)), 0),
                 func.coalesce(func.sum(case((young, studies.c.instance_count), else_=0)), 0),
                 func.coalesce(func.sum(case((young, studies.c.size_bytes), else_=0)), 0)]
    r = [int(v) for v in conn.execute(select(*cols).where(_ACTIVE)).one()]
    cumulative = [r[3 + 3 * i:6 + 3 * i] for i in range(len(bounds_months))] + [r[0:3]]
    out, prev = [], [0, 0, 0]
    for k, cur in enumerate(cumulative):
        out.append((k, cur[0] - prev[0], cur[1] - prev[1], cur[2] - prev[2]))
        prev = cur
    return out


def _younger_than(conn: Connection, today: date, bounds_months: Sequence[int], start: Any = None) -> list[Any]:
    """Per bound of months: the condition "the study (that started on ``start``, default its
    study date) is younger than that today" (see held_by_age)."""
    start = _study_date(conn) if start is None else start
    out = []
    for m in bounds_months:
        # a whole number of days d is under m months when d < ceil(m months in days)
        bound = today - timedelta(days=math.ceil(m * DAYS_PER_MONTH))
        out.append(start > (bound.isoformat() if conn.dialect.name != "postgresql" else bound))
    return out


@dataclass(frozen=True, slots=True)
class CostGroup:
    """Active studies that share their tiers, age bucket today and month received (YYYY-MM, '' if
    received before the months asked for)."""

    tiers: str
    age_bucket: int
    month: str
    studies: int
    instances: int
    size_bytes: int


def cost_groups(conn: Connection, *, today: date, bounds_months: Sequence[int],
                months_since: datetime) -> tuple[list[CostGroup], dict[str, int]]:
    """What the cost projection needs of every study, from one grouped pass over the active studies:
    the groups, and the bytes per tier (:func:`ilm.catalog.plans.tier_bytes`: the verified copies of
    the few studies held on several tiers summed from their locations, only if there are any).

    Sums of the groups by age bucket are :func:`held_by_age`, by month :func:`received_by_month`.
    """
    pg = conn.dialect.name == "postgresql"
    month = func.to_char(studies.c.received_at, "YYYY-MM") if pg else func.substr(studies.c.received_at, 1, 7)
    per = select(studies.c.tiers.label("t"), _study_date(conn).label("d"),
                 case((studies.c.received_at >= months_since, month), else_="").label("m"),
                 studies.c.instance_count, studies.c.size_bytes).where(_ACTIVE).subquery()
    young = _younger_than(conn, today, bounds_months, per.c.d)
    rows = select(per.c.t, case(*[(y, i) for i, y in enumerate(young)], else_=len(young)).label("ab"), per.c.m,
                  per.c.instance_count, per.c.size_bytes).subquery()
    q = (select(rows.c.t, rows.c.ab, rows.c.m, func.count(), func.sum(rows.c.instance_count),
                func.sum(rows.c.size_bytes)).group_by(rows.c.t, rows.c.ab, rows.c.m))
    groups = [CostGroup(t or "", int(ab), m or "", int(n), int(i), int(b)) for t, ab, m, n, i, b in conn.execute(q)]
    on_tier: dict[str, int] = {}
    for g in groups:
        if g.tiers and "\\" not in g.tiers:
            on_tier[g.tiers] = on_tier.get(g.tiers, 0) + g.size_bytes
    if any("\\" in g.tiers for g in groups):  # studies in the middle of a move: their verified copies
        for split in _multi_tier_bytes(conn, _ACTIVE & _MULTI).values():
            for t, b in split.items():
                on_tier[t] = on_tier.get(t, 0) + b
    return groups, on_tier


class _StudiesFirst(Join):
    """An inner join that SQLite runs in the order written (CROSS JOIN): the studies scanned in
    order and the access log found by its study index, rather than each logged read looking up its
    study at random in the (much larger) studies table: 3-9x faster over a million studies."""

    inherit_cache = True


@compiles(_StudiesFirst, "sqlite")
def _studies_first_sqlite(join: _StudiesFirst, compiler: Any, **kw: Any) -> str:
    kw["asfrom"] = True
    return (f"{compiler.process(join.left, **kw)} CROSS JOIN {compiler.process(join.right, **kw)} "
            f"ON {compiler.process(join.onclause, **kw)}")


def reads_by_age(conn: Connection, since: datetime, bounds_months: Sequence[int]) -> list[tuple[int, int, int]]:
    """Reads logged since ``since``, per study age at the read: bucket, reads, instances read."""
    age = _day(conn, access_log.c.at) - _study_day(conn)
    b = _age_bucket(age, bounds_months).label("b")
    rows = conn.execute(
        select(b, func.count(), func.coalesce(func.sum(access_log.c.instances), 0))
        .select_from(_StudiesFirst(studies, access_log, studies.c.study_uid == access_log.c.study_uid))
        .where(access_log.c.at >= since).group_by(b))
    return [(int(k), int(n), int(i)) for k, n, i in rows]


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


def sample_study_uids(conn: Connection, limit: int, *, received_since: datetime | None = None,
                      candidates: int | None = None) -> list[str]:
    """Up to ``limit`` active studies on a tier, spread evenly over the catalog: the studies
    whose row id is one of ``candidates`` (default ``limit``) ids evenly spaced up to the largest,
    looked up by primary key (no scan); with ``received_since``, only those received since."""
    top = conn.execute(select(func.max(studies.c.id))).scalar()
    if not top or limit <= 0:
        return []
    n = max(limit, candidates or limit)
    where = and_(_ACTIVE, studies.c.tiers != "")
    if received_since is not None:
        where = and_(where, studies.c.received_at >= received_since)
    if top <= 2 * n:  # a small catalog: all its studies, if they are no more than the limit
        every = [u for (u,) in conn.execute(select(studies.c.study_uid).where(where).order_by(studies.c.id)
                                            .limit(limit + 1))]
        if len(every) <= limit:
            return every
    step = max(1.0, top / n)
    ids = sorted({min(top, int(1 + i * step)) for i in range(n)})
    out: list[str] = []
    for i in range(0, len(ids), 5000):
        q = select(studies.c.study_uid).where(where, studies.c.id.in_(ids[i:i + 5000])).order_by(studies.c.id)
        out.extend(u for (u,) in conn.execute(q))
        if len(out) >= limit:
            break
    return out[:limit]
