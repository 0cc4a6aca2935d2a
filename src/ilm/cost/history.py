"""Storage by tier over time: the snapshot rows rolled up by month, and the past rebuilt from
what the catalog still knows. Pure (the rows come from :mod:`ilm.catalog.history`).

The reconstruction counts each study still in the catalog from the month it was
received to the month it was quarantined (if it was), on the tier it is on now,
walked back through the moves journal: a move from A to B in month m means the
study was on A from the month it was received until m, and on B from m. The
figures are those at the end of each month. Studies purged since, and moves
whose journal rows were removed, are not known to it (docs/cost.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any, Protocol

__all__ = ["month_end", "months_between", "reconstruct", "monthly", "merged_arrivals"]

Counts = list[int]  # studies, instances, bytes


class DayRow(Protocol):
    @property
    def day(self) -> date: ...
    @property
    def studies(self) -> int: ...
    @property
    def instances(self) -> int: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def reconstructed(self) -> bool: ...


def month_end(month: str) -> date:
    """The last day of a month 'YYYY-MM'."""
    y, m = (int(x) for x in month.split("-"))
    first_next = date(y + m // 12, m % 12 + 1, 1)
    return first_next - timedelta(days=1)


def months_between(first: str, last: str) -> list[str]:
    """'YYYY-MM' months from ``first`` to ``last``, both included."""
    y, m = (int(x) for x in first.split("-"))
    out = []
    while f"{y:04d}-{m:02d}" <= last:
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _add(deltas: dict[tuple[str, str], Counts], month: str, tier: str, sign: int, n: int, i: int, b: int) -> None:
    acc = deltas.setdefault((month, tier), [0, 0, 0])
    acc[0] += sign * n
    acc[1] += sign * i
    acc[2] += sign * b


def reconstruct(spans: Iterable[tuple[str, str, str, int, int, int]],
                moved: Iterable[tuple[str, str, str, str, int, int, int]],
                until: str) -> dict[str, dict[str, Counts]]:
    """Month ('YYYY-MM', up to ``until``) -> tier -> [studies, instances, bytes] at the month's end.

    ``spans``: (tiers now, month received, month quarantined or '', studies, instances, bytes);
    ``moved``: (from tier, to tier, month moved, month received, studies, instances, bytes)."""
    deltas: dict[tuple[str, str], Counts] = {}
    for tiers, received, ended, n, i, b in spans:
        tier = tiers.split("\\")[0]
        if not tier or not received:
            continue
        _add(deltas, received, tier, 1, n, i, b)
        if ended:
            _add(deltas, ended, tier, -1, n, i, b)
    for src, dst, month, received, n, i, b in moved:
        if not received or not month:
            continue
        _add(deltas, received, src, 1, n, i, b)   # it arrived on the move's source ...
        _add(deltas, received, dst, -1, n, i, b)  # ... not where it is now
        _add(deltas, month, src, -1, n, i, b)
        _add(deltas, month, dst, 1, n, i, b)
    if not deltas:
        return {}
    first = min(m for m, _t in deltas)
    totals: dict[str, Counts] = {}
    out: dict[str, dict[str, Counts]] = {}
    by_month: dict[str, list[tuple[str, Counts]]] = {}
    for (m, t), c in deltas.items():
        by_month.setdefault(m, []).append((t, c))
    for month in months_between(first, until):
        for t, c in by_month.get(month, []):
            acc = totals.setdefault(t, [0, 0, 0])
            for k in range(3):
                acc[k] += c[k]
        out[month] = {t: [max(0, v) for v in c] for t, c in sorted(totals.items()) if c[0] > 0 or c[2] > 0}
    return out


def monthly(tiers: Iterable[tuple[date, str, int, int, int, bool]], received: Iterable[DayRow]) -> list[dict[str, Any]]:
    """Per month: the tiers at its last snapshot, what arrived in it, and whether any of it was
    reconstructed rather than recorded."""
    last: dict[str, date] = {}
    rows = list(tiers)
    for day, *_rest in rows:
        m = day.isoformat()[:7]
        last[m] = max(last.get(m, day), day)
    out: dict[str, dict[str, Any]] = {}
    for day, tier, n, i, b, rec in rows:
        m = day.isoformat()[:7]
        if day != last[m]:
            continue
        e = out.setdefault(m, {"month": m, "day": day.isoformat(), "reconstructed": False, "tiers": {},
                               "received": {"studies": 0, "instances": 0, "bytes": 0}})
        e["tiers"][tier] = {"studies": n, "instances": i, "bytes": b}
        e["reconstructed"] = e["reconstructed"] or rec
    for r in received:
        m = r.day.isoformat()[:7]
        e = out.setdefault(m, {"month": m, "day": None, "reconstructed": False, "tiers": {},
                               "received": {"studies": 0, "instances": 0, "bytes": 0}})
        got = e["received"]
        got["studies"] += r.studies
        got["instances"] += r.instances
        got["bytes"] += r.size_bytes
        e["reconstructed"] = e["reconstructed"] or r.reconstructed
    return [out[m] for m in sorted(out)]


def merged_arrivals(live: Sequence[tuple[str, int, int]], recorded: Mapping[str, tuple[int, int]]
                    ) -> list[tuple[str, int, int]]:
    """Studies and bytes received per month: the larger of what the catalog holds now of each
    month's arrivals (``live``: studies deleted since are missing) and what the snapshots counted
    as they arrived (``recorded``: months after the last snapshot are missing). Both only ever
    undercount, so the larger is the better figure."""
    out = {m: (n, b) for m, n, b in live}
    for m, (n, b) in recorded.items():
        have = out.get(m, (0, 0))
        out[m] = (max(have[0], n), max(have[1], b))
    return [(m, n, b) for m, (n, b) in sorted(out.items())]
