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

__all__ = ["render_html", "chart_svgs", "chart_drawers", "CHARTS"]

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


def chart_drawers(data: dict[str, Any]) -> dict[str, charts.Draw]:
    """How to draw each chart of the report on an Axes, by name (CHARTS)."""
    cost, stats, plans = data["cost"], data["stats"], data["plans"]
    years = list(range(cost["years"] + 1))
    shown = _shown_scenario(cost)
    past = _recorded(stats.get("tier_history", []), cost["as_of"])
    xs = [x for x, _p in past] + [float(y) for y in years]
    points = [p for _x, p in past] + [cost["current"]["bytes_by_tier"]] + [y["bytes_by_tier"] for y in shown["years"]]
    named = list(cost["prices"]) + sorted({t for p in points for t in p} - set(cost["prices"]))
    tiers = [t for t in named if any(p.get(t) for p in points)] or list(cost["prices"])[:1]
    months = stats["growth"]["by_month"][-36:]
    names = [p["name"] for p in plans] or ["(no policy)"]
    moved = [sum(a["bytes"] for a in p["summary"]["actions"] if a["action"] == "transition") for p in plans]
    deleted = [sum(a["bytes"] for a in p["summary"]["actions"] if a["action"] == "expire") for p in plans]
    protections = sorted({k for p in plans for k in p["summary"]["vetoes"]}) or ["(none)"]
    reads = stats["reads_by_age"]
    return {
        "storage": lambda ax: charts.draw_stacked_area(
            ax, f"Storage by tier{': recorded (before 0), then' if past else ' over time,'} projected: {shown['name']}", xs,
            {t: [p.get(t, 0) for p in points] for t in tiers}, xlabel="years from now (0: today)",
            now=0.0 if past else None),
        "cost": lambda ax: charts.draw_lines(
            ax, "Cost projection per policy (cumulative)", years[1:],
            {s["name"]: [y["cumulative"] for y in s["years"]] for s in cost["scenarios"]},
            xlabel="year", ylabel="cumulative cost"),
        "reads": lambda ax: charts.draw_bars(
            ax, f"Reads by study age (last {reads['window_days']} days)", [b["age"] for b in reads["buckets"]],
            [b["monthly_read_rate"] for b in reads["buckets"]],
            series="share of instances read per month", ylabel="read per month", percent=True),
        "growth": lambda ax: charts.draw_bars(
            ax, "Growth: bytes received per month", [m["month"] for m in months], [m["bytes"] for m in months],
            series="bytes received", ylabel="received", as_bytes=True),
        "plans": lambda ax: charts.draw_grouped_bars(
            ax, "What each plan moves and deletes today", ["moved", "deleted"],
            {n: [m, d] for n, m, d in zip(names, moved, deleted)} or {"(no policy)": [0, 0]}, ylabel="bytes",
            as_bytes=True),
        "vetoes": lambda ax: charts.draw_grouped_bars(
            ax, "Protections that vetoed an expiry (studies)", protections,
            {p["name"]: [p["summary"]["vetoes"].get(k, 0) for k in protections] for p in plans}
            or {"(no policy)": [0] * len(protections)}, ylabel="studies"),
    }


def chart_svgs(data: dict[str, Any]) -> dict[str, str]:
    """One SVG per chart of the report, by name (CHARTS)."""
    return {name: charts.svg_chart(draw) for name, draw in chart_drawers(data).items()}


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
