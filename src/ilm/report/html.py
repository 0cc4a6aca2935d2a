"""Render the report data (``ArchiveService.report``) as one self-contained HTML page.

The page needs no network: styles are inline, charts are inline SVG, there
is no script. Numbers are formatted as ``ilm cost`` and ``ilm stats`` print
them; the cost tables carry the same values as ``ilm cost --json``.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from ilm.cost.shaping import money_text
from ilm.report import charts

__all__ = ["render_html", "chart_svgs", "CHARTS"]

CHARTS = ("storage", "cost", "reads", "growth", "plans", "vetoes")


def _bytes(n: float) -> str:
    for unit, f in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:,.1f} {unit}"
    return f"{n:,.0f} B"


_money = money_text


def _shown_scenario(cost: dict[str, Any]) -> dict[str, Any]:
    scen = cost["scenarios"]
    return next((s for s in scen if s["kind"] == "policy"), scen[1] if len(scen) > 1 else scen[0])


def _recorded(history: list[dict[str, Any]], as_of: str) -> list[tuple[float, dict[str, int]]]:
    """The recorded months before the month of ``as_of`` (x: years before it, negative), bytes per tier."""
    def index(ym: str) -> int:
        y, m = ym[:7].split("-")
        return int(y) * 12 + int(m) - 1

    now = index(as_of)
    return [((index(h["month"]) - now) / 12, {t: v["bytes"] for t, v in h["tiers"].items()})
            for h in history if h["tiers"] and index(h["month"]) < now]


def chart_svgs(data: dict[str, Any]) -> dict[str, str]:
    """One SVG per chart of the report, by name (CHARTS)."""
    cost, stats, plans = data["cost"], data["stats"], data["plans"]
    years = list(range(cost["years"] + 1))
    shown = _shown_scenario(cost)
    past = _recorded(stats.get("tier_history", []), cost["as_of"])
    xs = [x for x, _p in past] + [float(y) for y in years]
    points = [p for _x, p in past] + [cost["current"]["bytes_by_tier"]] + [y["bytes_by_tier"] for y in shown["years"]]
    named = list(cost["prices"]) + sorted({t for p in points for t in p} - set(cost["prices"]))
    tiers = [t for t in named if any(p.get(t) for p in points)] or list(cost["prices"])[:1]
    out = {
        "storage": charts.stacked_area(
            f"Storage by tier over time: recorded{' (reconstructed before snapshots)' if past else ''}, "
            f"then projected: {shown['name']}", xs,
            {t: [p.get(t, 0) for p in points] for t in tiers}, xlabel="years from now (0: today)", now=0.0 if past else None),
        "cost": charts.lines(
            "Cost projection per policy (cumulative)", years[1:],
            {s["name"]: [y["cumulative"] for y in s["years"]] for s in cost["scenarios"]},
            xlabel="year", ylabel="cumulative cost"),
        "reads": charts.bars(
            f"Reads by study age (last {stats['reads_by_age']['window_days']} days)",
            [b["age"] for b in stats["reads_by_age"]["buckets"]],
            [b["monthly_read_rate"] for b in stats["reads_by_age"]["buckets"]],
            series="share of instances read per month", ylabel="read per month", percent=True),
    }
    months = stats["growth"]["by_month"][-36:]
    out["growth"] = charts.bars("Growth: bytes received per month", [m["month"] for m in months],
                                [m["bytes"] for m in months], series="bytes received", ylabel="received",
                                as_bytes=True)
    names = [p["name"] for p in plans] or ["(no policy)"]
    moved = [sum(a["bytes"] for a in p["summary"]["actions"] if a["action"] == "transition") for p in plans]
    deleted = [sum(a["bytes"] for a in p["summary"]["actions"] if a["action"] == "expire") for p in plans]
    out["plans"] = charts.grouped_bars(
        "What each plan moves and deletes today", ["moved", "deleted"],
        {n: [m, d] for n, m, d in zip(names, moved, deleted)} or {"(no policy)": [0, 0]}, ylabel="bytes",
        as_bytes=True)
    protections = sorted({k for p in plans for k in p["summary"]["vetoes"]}) or ["(none)"]
    out["vetoes"] = charts.grouped_bars(
        "Protections that vetoed an expiry (studies)", protections,
        {p["name"]: [p["summary"]["vetoes"].get(k, 0) for k in protections] for p in plans}
        or {"(no policy)": [0] * len(protections)}, ylabel="studies")
    return out


def render_html(data: dict[str, Any]) -> str:
    env = Environment(loader=PackageLoader("ilm.report", "templates"), autoescape=select_autoescape(["j2", "html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = _money
    env.filters["bytes"] = _bytes
    env.filters["pct"] = lambda x, d=1: f"{x:.{d}%}"
    env.filters["num"] = lambda x: f"{x:,}"
    return env.get_template("report.html.j2").render(
        d=data, cost=data["cost"], stats=data["stats"], plans=data["plans"], svg=chart_svgs(data),
        shown=_shown_scenario(data["cost"]))
