"""Projecting the cost of an archive month by month over N years. Pure.

The archive is a set of *cohorts*: bytes that share one path through the
tiers (a :class:`Segment` list: from month s on, on tier T; ``None`` once
deleted). Every month a cohort costs its storage on the tier it is on and
the reads the access history expects at its age (:class:`ReadProfile`);
a change of segment costs a move (read at the source, PUTs at the target,
early deletion at the source) or, for a deletion, the early-deletion
charge alone. New data arrives every month (:class:`Growth`) and follows
the paths of *templates*, the recent arrivals' paths from their first
month, scaled to the bytes arriving; its PUTs on the tier it arrives on
are the ``ingest`` cost.

Months are 30 days for the time a cohort has been on a tier. Money is in
the unit of the configured prices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ilm.cost.model import DAYS_PER_MONTH, GB, TierPrice, early_deletion_cost, move_cost, read_cost, write_cost

__all__ = [
    "Segment", "Cohort", "ReadProfile", "Growth", "Scenario", "YearCost", "Projection", "project",
    "AGE_BUCKETS", "read_profile", "CATEGORIES", "merge",
]

FREE = TierPrice(0.0)
CATEGORIES = ("storage", "retrieval", "moves", "ingest")

# Upper bounds (months, exclusive) of the study-age buckets of reads; the last is open.
AGE_BUCKETS: tuple[int, ...] = (1, 3, 6, 12, 24, 60, 120)


@dataclass(frozen=True, slots=True)
class Segment:
    start: int          # month (from the cohort's first month) it is on ``tier`` from
    tier: str | None    # None: deleted


@dataclass(frozen=True, slots=True)
class Cohort:
    nbytes: float
    objects: float      # instances
    studies: float
    age_months: int     # study age at the cohort's first month (for the read rate)
    held_days: float    # days already on its first tier (for early deletion)
    path: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class ReadProfile:
    """Share of a study's bytes (and objects) read per month, by study age."""

    rates: tuple[float, ...] = ()  # one per bucket: AGE_BUCKETS and the open last bucket

    def rate(self, age_months: int) -> float:
        if not self.rates:
            return 0.0
        for i, upper in enumerate(AGE_BUCKETS):
            if age_months < upper:
                return self.rates[i] if i < len(self.rates) else 0.0
        return self.rates[len(AGE_BUCKETS)] if len(self.rates) > len(AGE_BUCKETS) else 0.0


def merge(cohorts: Sequence[Cohort]) -> list[Cohort]:
    """Cohorts with the same path and age summed into one (the projection is linear in bytes).

    Days already held are kept apart by 30-day month (they only matter for an early deletion).
    """
    out: dict[tuple[tuple[Segment, ...], int, int], list[float]] = {}
    for c in cohorts:
        key = (c.path, c.age_months, int(c.held_days // DAYS_PER_MONTH))
        acc = out.setdefault(key, [0.0, 0.0, 0.0, 0.0])
        acc[0] += c.nbytes
        acc[1] += c.objects
        acc[2] += c.studies
        acc[3] += c.held_days * c.nbytes
    return [Cohort(b, o, s, age, held / b if b else 0.0, path) for (path, age, _), (b, o, s, held) in out.items()]


def read_profile(read_objects: Sequence[float], held_objects: Sequence[float], window_months: float) -> ReadProfile:
    """Read rates from the access history: objects read in each age bucket over
    ``window_months``, divided by the objects now in that bucket and by the months."""
    rates = []
    for r, n in zip(read_objects, held_objects):
        rates.append(r / n / window_months if n > 0 and window_months > 0 else 0.0)
    return ReadProfile(tuple(rates))


@dataclass(frozen=True, slots=True)
class Growth:
    bytes_per_month: float = 0.0  # arriving in the first projected month
    yearly_rate: float = 0.0      # 0.1: the monthly arrivals grow 10 % a year

    def arrivals(self, months: int) -> list[float]:
        return [self.bytes_per_month * (1 + self.yearly_rate) ** (m / 12) for m in range(months)]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    existing: Sequence[Cohort]
    templates: Sequence[Cohort] = ()  # paths of new data; nbytes/objects/studies are relative weights
    first_tier: str = ""              # where new data lands when there is no template


@dataclass(frozen=True, slots=True)
class YearCost:
    year: int
    storage: float
    retrieval: float
    moves: float
    ingest: float
    bytes_by_tier: dict[str, int]  # at the end of the year

    @property
    def total(self) -> float:
        return self.storage + self.retrieval + self.moves + self.ingest


@dataclass(frozen=True)
class Projection:
    name: str
    years: list[YearCost]
    monthly_now: float          # storage + reads of the archive as it is, first month, before any move
    one_time_now: float         # the moves (and deletions' early charges) in the first month
    monthly_after: float        # storage + reads of today's data a month, right after those moves
    studies_moved_now: float = 0.0
    bytes_moved_now: float = 0.0
    bytes_deleted_now: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(y.total for y in self.years)


class _Series:
    def __init__(self, months: int) -> None:
        self.months = months
        self.cost = {c: [0.0] * months for c in CATEGORIES}
        self.tiers: dict[str, list[float]] = {}
        self.moved = [0.0, 0.0, 0.0]  # studies, bytes moved and bytes deleted in month 0

    def add(self, other: "_Series", weights: Sequence[float]) -> None:
        """Add ``other`` convolved with ``weights`` (weights[m]: the scale of a copy starting at month m)."""
        n = self.months
        for c in CATEGORIES:
            mine, theirs = self.cost[c], other.cost[c]
            for m, w in enumerate(weights):
                if w:
                    for t in range(m, n):
                        mine[t] += w * theirs[t - m]
        for tier, theirs in other.tiers.items():
            mine = self.tiers.setdefault(tier, [0.0] * n)
            for m, w in enumerate(weights):
                if w:
                    for t in range(m, n):
                        mine[t] += w * theirs[t - m]


def _cohort(out: _Series, c: Cohort, prices: Mapping[str, TierPrice], reads: ReadProfile, *,
            arriving: bool = False) -> None:
    n = out.months
    path = c.path
    if arriving and path and path[0].tier is not None:
        out.cost["ingest"][0] += write_cost(c.objects, prices.get(path[0].tier, FREE), c.studies)
    for i, seg in enumerate(path):
        if seg.tier is None:
            break
        end = path[i + 1].start if i + 1 < len(path) else n
        p = prices.get(seg.tier, FREE)
        held = out.tiers.setdefault(seg.tier, [0.0] * n)
        storage, retrieval = out.cost["storage"], out.cost["retrieval"]
        per_month = c.nbytes / GB * p.per_gb_month
        for t in range(max(seg.start, 0), min(end, n)):
            held[t] += c.nbytes
            storage[t] += per_month
            rate = reads.rate(c.age_months + t)
            if rate:
                retrieval[t] += read_cost(c.nbytes * rate, c.objects * rate, p, c.studies * rate)
        if i + 1 < len(path) and end < n:
            days = (end - seg.start) * DAYS_PER_MONTH + (c.held_days if i == 0 else 0.0)
            nxt = path[i + 1].tier
            if nxt is None:
                out.cost["moves"][end] += early_deletion_cost(c.nbytes, days, p)
                if end == 0:
                    out.moved[2] += c.nbytes
            elif nxt != seg.tier:
                out.cost["moves"][end] += move_cost(c.nbytes, c.objects, p, prices.get(nxt, FREE), held_days=days,
                                                    studies=c.studies).total
                if end == 0:
                    out.moved[0] += c.studies
                    out.moved[1] += c.nbytes


def _monthly(c: Cohort, tier: str | None, prices: Mapping[str, TierPrice], reads: ReadProfile) -> float:
    """What a cohort costs a month on ``tier`` at its age: storage and reads."""
    if tier is None:
        return 0.0
    p, rate = prices.get(tier, FREE), reads.rate(c.age_months)
    return c.nbytes / GB * p.per_gb_month + read_cost(c.nbytes * rate, c.objects * rate, p, c.studies * rate)


def project(scenario: Scenario, prices: Mapping[str, TierPrice], *, years: int, growth: Growth = Growth(),
            reads: ReadProfile = ReadProfile()) -> Projection:
    """The cost of a scenario, year by year, over ``years`` years from now."""
    months = max(1, years) * 12
    existing = _Series(months)
    for c in scenario.existing:
        _cohort(existing, c, prices, reads)
    total = _Series(months)
    total.add(existing, [1.0])
    arrivals = growth.arrivals(months)
    if any(arrivals):
        templates = list(scenario.templates) or [
            Cohort(1.0, 0.0, 0.0, 0, 0.0, (Segment(0, scenario.first_tier or None),))]
        weight = sum(t.nbytes for t in templates)
        unit = _Series(months)
        for t in templates:
            share = t.nbytes / weight if weight else 0.0
            per_byte = 1 / t.nbytes if t.nbytes else 0.0
            _cohort(unit, Cohort(share, t.objects * per_byte * share, t.studies * per_byte * share, t.age_months,
                                 t.held_days, t.path), prices, reads, arriving=True)
        total.add(unit, arrivals)
    out = []
    for y in range(years):
        span = range(12 * y, 12 * y + 12)
        last = 12 * y + 11
        out.append(YearCost(
            year=y + 1, **{c: sum(total.cost[c][m] for m in span) for c in CATEGORIES},
            bytes_by_tier={tier: int(round(v[last])) for tier, v in sorted(total.tiers.items()) if round(v[last])},
        ))
    now = sum(_monthly(c, c.path[0].tier, prices, reads) for c in scenario.existing if c.path)
    after = sum(_monthly(c, [s for s in c.path if s.start <= 0][-1].tier, prices, reads)
                for c in scenario.existing if c.path)
    return Projection(scenario.name, out, monthly_now=now, one_time_now=existing.cost["moves"][0],
                      monthly_after=after, studies_moved_now=existing.moved[0], bytes_moved_now=existing.moved[1],
                      bytes_deleted_now=existing.moved[2])
