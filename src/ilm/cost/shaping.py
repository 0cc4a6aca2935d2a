"""Analytics rows and projections shaped into reports (plain dicts, JSON-ready). Pure.

The catalog adapter (:mod:`ilm.catalog.analytics`) returns grouped rows;
these functions name the buckets, compute shares and rates, estimate the
growth, and lay projections side by side with their savings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from dataclasses import dataclass, field
from typing import Any, Protocol

from ilm.cost.projection import AGE_BUCKETS, Projection

__all__ = [
    "age_labels", "size_labels", "composition", "GroupRow", "Marginals", "marginals", "growth_from_history",
    "reads_report",
    "never_read_report", "priors_report", "comparison", "money", "money_text",
]


def money(x: float) -> float:
    """Amounts in reports (JSON): to 1/100 of a cent, so that a small archive does not show zeros."""
    return round(x + 0.0, 4)


def money_text(x: float) -> str:
    """Amounts as printed: cents, or four decimals under 1."""
    return f"{x:,.2f}" if abs(x) >= 1 or x == 0 else f"{x:.4f}"


def _months(n: int) -> str:
    return f"{n // 12} y" if n % 12 == 0 and n >= 12 else f"{n} mo"


def age_labels(bounds_months: Sequence[int] = AGE_BUCKETS) -> list[str]:
    out, lo = [], 0
    for b in bounds_months:
        out.append(f"{_months(lo) if lo else '0'}-{_months(b)}")
        lo = b
    out.append(f">= {_months(lo)}")
    return out


def _size(n: int) -> str:
    for unit, f in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= f:
            return f"{n / f:g} {unit}"
    return f"{n} B"


def size_labels(bounds: Sequence[int]) -> list[str]:
    out = [f"< {_size(bounds[0])}"]
    out += [f"{_size(a)}-{_size(b)}" for a, b in zip(bounds, bounds[1:])]
    out.append(f">= {_size(bounds[-1])}")
    return out


def composition(rows: Iterable[tuple[Any, int, int, int]], total_bytes: int,
                labels: Sequence[str] | None = None, unknown: str = "(none)") -> list[dict[str, Any]]:
    """Rows of (key, studies, instances, bytes) with each key's share of the bytes."""
    out = []
    for key, n, inst, b in rows:
        name = labels[int(key)] if labels is not None else (str(key) if key not in (None, "") else unknown)
        out.append({"key": name, "studies": n, "instances": inst, "bytes": b,
                    "share": round(b / total_bytes, 4) if total_bytes else 0.0})
    return out


class GroupRow(Protocol):
    """One group of studies as the catalog adapter returns it (ilm.catalog.analytics.StudyGroup)."""

    @property
    def year(self) -> str: ...
    @property
    def month(self) -> str: ...
    @property
    def size_bucket(self) -> int: ...
    @property
    def age_bucket(self) -> int: ...
    @property
    def tiers(self) -> str: ...
    @property
    def modalities(self) -> str: ...
    @property
    def studies(self) -> int: ...
    @property
    def instances(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def older(self) -> tuple[int, ...]: ...
    @property
    def unread(self) -> tuple[int, ...]: ...


@dataclass
class Marginals:
    """Sums of the groups along each dimension: rows of (key, studies, instances, bytes)."""

    studies: int = 0
    instances: int = 0
    size_bytes: int = 0
    by: dict[str, dict[Any, list[int]]] = field(default_factory=dict)
    older: list[int] = field(default_factory=list)
    unread: list[int] = field(default_factory=list)

    def rows(self, dimension: str) -> list[tuple[Any, int, int, int]]:
        return [(k, v[0], v[1], v[2]) for k, v in sorted(self.by.get(dimension, {}).items())]


def marginals(groups: Iterable[GroupRow]) -> Marginals:
    m = Marginals()
    for g in groups:
        m.studies += g.studies
        m.instances += g.instances
        m.size_bytes += g.size_bytes
        keys = {"year": g.year, "month": g.month, "size": g.size_bucket, "age": g.age_bucket,
                "tier": "+".join(t for t in g.tiers.split("\\") if t),
                "modalities": "+".join(x for x in g.modalities.split("\\") if x)}
        for dim, key in keys.items():
            acc = m.by.setdefault(dim, {}).setdefault(key, [0, 0, 0])
            acc[0] += g.studies
            acc[1] += g.instances
            acc[2] += g.size_bytes
        if not m.older:
            m.older, m.unread = [0] * len(g.older), [0] * len(g.unread)
        for i, (o, u) in enumerate(zip(g.older, g.unread)):
            m.older[i] += o
            m.unread[i] += u
    return m


def _month_index(ym: str) -> int:
    y, m = ym.split("-")
    return int(y) * 12 + int(m) - 1


MIN_STUDIES_FOR_RATE = 100  # per year: below this the growth rate of a history is noise
MAX_YEARLY_RATE = 1.0        # a projection compounds the rate: one odd year must not explode it


def growth_from_history(months: Iterable[tuple[str, int, int]], today: date) -> dict[str, Any]:
    """Bytes received per month over the last 12 full months, and the yearly growth of that rate.

    The rate compares the last 12 full months with the 12 months two years before them:
    (last / earlier) ** (1/2) - 1, between -50 % and +100 %; it is 0 when either year has
    fewer than 100 studies (or the history is shorter). Only studies still in the archive count.
    """
    now = today.year * 12 + today.month - 1
    years = [[0, 0], [0, 0], [0, 0]]  # studies, bytes of the last 12 full months, the 12 before, ...
    for ym, n, b in months:
        try:
            k = now - _month_index(ym)
        except ValueError:
            continue
        if 1 <= k <= 36:
            y = years[(k - 1) // 12]
            y[0] += n
            y[1] += b
    (n1, b1), _, (n3, b3) = years
    rate = 0.0
    note = "too little history for a growth rate: 0"
    if n1 >= MIN_STUDIES_FOR_RATE and n3 >= MIN_STUDIES_FOR_RATE and b3 > 0:
        rate = max(-0.5, min(MAX_YEARLY_RATE, (b1 / b3) ** 0.5 - 1))
        note = "the rate from the 12 months two years before"
    return {"bytes_per_month": b1 / 12, "yearly_rate": round(rate, 4),
            "source": f"catalog: bytes received in the last 12 full months; {note}"}


def reads_report(reads: Iterable[tuple[int, int, int]], held: Iterable[tuple[int, int, int, int]],
                 window_months: float, bounds: Sequence[int] = AGE_BUCKETS) -> list[dict[str, Any]]:
    """Per study-age bucket: reads and instances read in the window, instances held now, monthly read rate."""
    r = {k: (n, i) for k, n, i in reads}
    h = {k: (n, i, b) for k, n, i, b in held}
    out = []
    for k, label in enumerate(age_labels(bounds)):
        n_reads, inst_read = r.get(k, (0, 0))
        studies, inst_held, b = h.get(k, (0, 0, 0))
        rate = inst_read / inst_held / window_months if inst_held and window_months else 0.0
        out.append({"age": label, "reads": n_reads, "instances_read": inst_read, "studies": studies,
                    "instances": inst_held, "bytes": b, "monthly_read_rate": round(rate, 6)})
    return out


def never_read_report(rows: Iterable[tuple[int, int, int]]) -> list[dict[str, Any]]:
    return [{"days": d, "studies_older": n, "never_read_after": u, "share": round(u / n, 4) if n else 0.0}
            for d, n, u in rows]


def priors_report(rows: Iterable[tuple[int, int]]) -> dict[str, Any]:
    dist = {n: p for n, p in rows}
    patients = sum(dist.values())
    with_priors = sum(p for n, p in dist.items() if n >= 2)
    return {"patients": patients, "with_priors": with_priors,
            "share": round(with_priors / patients, 4) if patients else 0.0,
            "studies_per_patient": [{"studies": n, "patients": p} for n, p in sorted(dist.items())]}


def _tiers(d: Mapping[str, float]) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(d.items())}


def comparison(projections: Sequence[tuple[str, str, Projection]]) -> list[dict[str, Any]]:
    """Scenarios side by side: per year cost by part, cumulative, savings against the first (the baseline)."""
    base = projections[0][2]
    out = []
    for kind, source, p in projections:
        cum = saved = 0.0
        years = []
        for y, b in zip(p.years, base.years):
            cum += y.total
            saved += b.total - y.total
            years.append({"year": y.year, "storage": money(y.storage), "retrieval": money(y.retrieval),
                          "moves": money(y.moves), "ingest": money(y.ingest), "total": money(y.total),
                          "cumulative": money(cum), "savings": money(b.total - y.total),
                          "cumulative_savings": money(saved), "bytes_by_tier": _tiers(y.bytes_by_tier)})
        out.append({"name": p.name, "kind": kind, "policy": source, "years": years, "total": money(p.total),
                    "savings": money(base.total - p.total),
                    "savings_share": round((base.total - p.total) / base.total, 4) if base.total else 0.0,
                    "monthly_now": money(p.monthly_now), "one_time_now": money(p.one_time_now),
                    "monthly_after": money(p.monthly_after), "studies_moved_now": round(p.studies_moved_now),
                    "bytes_moved_now": int(p.bytes_moved_now), "bytes_deleted_now": int(p.bytes_deleted_now)})
    return out
