"""The dashboard's charts: inline SVG drawn with matplotlib (no script, no network).

Each function takes what a page already has (rows of the service's answers)
and returns an ``<svg>`` element as text, or a short note when there is
nothing to draw.
"""

from __future__ import annotations

import io
import threading
from typing import Any, Sequence

__all__ = ["cost", "growth", "plan", "scenario_rows", "tier_history", "tiers"]
_lock = threading.Lock()  # pyplot's state is global: one chart at a time


def _svg(draw: Any, width: float = 8.0, height: float = 3.0) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with _lock:
        fig, ax = plt.subplots(figsize=(width, height))
        try:
            draw(ax)
            ax.spines[["top", "right"]].set_visible(False)
            fig.tight_layout()
            buf = io.StringIO()
            fig.savefig(buf, format="svg")
        finally:
            plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _note(text: str) -> str:
    return f'<p class="hint">{text}</p>'


def tiers(rows: Sequence[dict[str, Any]]) -> str:
    """Bytes per tier (GB) with each tier's monthly cost written on its bar."""
    if not any(r["bytes"] for r in rows):
        return _note("nothing stored yet")

    def draw(ax: Any) -> None:
        names = [r["name"] for r in rows]
        gb = [r["bytes"] / 1e9 for r in rows]
        bars = ax.bar(names, gb, color="#1f5fbf")
        for bar, r in zip(bars, rows):
            ax.annotate(f"{r['cost']}/month", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("GB stored")
        ax.set_title("Storage by tier")

    return _svg(draw)


def growth(by_month: Sequence[dict[str, Any]]) -> str:
    """Bytes received per month (the catalog's history)."""
    months = [m for m in by_month if m.get("month")]
    if not months:
        return _note("no history yet")

    def draw(ax: Any) -> None:
        xs = [m["month"] for m in months]
        ax.bar(range(len(xs)), [m["bytes"] / 1e9 for m in months], color="#1e7a3c")
        step = max(1, len(xs) // 12)
        ax.set_xticks(range(0, len(xs), step), xs[::step], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("GB received")
        ax.set_title("Growth per month")

    return _svg(draw)


def tier_history(months: Sequence[dict[str, Any]]) -> str:
    """Bytes per tier at each month's end (the recorded snapshots), stacked."""
    months = [m for m in months if m.get("tiers")]
    if not months:
        return _note("no snapshot of storage by tier yet: ilm serve records one a day (ilm stats --snapshot now)")
    names = sorted({t for m in months for t in m["tiers"]})

    def draw(ax: Any) -> None:
        xs = [m["month"] + ("*" if m["reconstructed"] else "") for m in months]
        bottom = [0.0] * len(xs)
        for name in names:
            gb = [m["tiers"].get(name, {}).get("bytes", 0) / 1e9 for m in months]
            ax.bar(range(len(xs)), gb, bottom=bottom, label=name)
            bottom = [a + b for a, b in zip(bottom, gb)]
        step = max(1, len(xs) // 12)
        ax.set_xticks(range(0, len(xs), step), xs[::step], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("GB stored")
        ax.set_title("Storage by tier over time (month ends; * reconstructed)")
        ax.legend(fontsize=7)

    return _svg(draw)


def plan(summary: dict[str, Any]) -> str:
    """Bytes per tier before and after the plan."""
    before, after = summary.get("bytes_before") or {}, summary.get("bytes_after") or {}
    names = sorted(set(before) | set(after))
    if not names:
        return _note("the plan moves nothing")

    def draw(ax: Any) -> None:
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [before.get(n, 0) / 1e9 for n in names], width=0.4, label="before",
               color="#9aa7bd")
        ax.bar([x + 0.2 for x in xs], [after.get(n, 0) / 1e9 for n in names], width=0.4, label="after",
               color="#1f5fbf")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("GB")
        ax.set_title("Storage by tier, before and after the plan")
        ax.legend()

    return _svg(draw)


def scenario_rows(report: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The cost report's scenarios as table rows: yearly totals, total, savings."""
    rows = []
    labels: list[str] = []
    for s in report.get("scenarios", []):
        years = s.get("years", [])
        labels = labels or [f"year {y['year']}" for y in years]
        share = s.get("savings_share") or 0.0
        rows.append({"name": s["name"], "years": [y["total"] for y in years], "total": s["total"],
                     "saves": f"{share * 100:.0f}%" if s.get("kind") != "baseline" else ""})
    return labels, rows


def cost(report: dict[str, Any]) -> str:
    """Cumulative cost per scenario over the projection's years."""
    scenarios = report.get("scenarios", [])
    if not scenarios:
        return _note("no projection")

    def draw(ax: Any) -> None:
        for s in scenarios:
            ys = [float(y["cumulative"]) for y in s["years"]]
            ax.plot(range(1, len(ys) + 1), ys, marker="o", label=s["name"])
        ax.set_xlabel("year")
        ax.set_ylabel("cumulative cost ($)")
        ax.set_title("Cost projection per policy")
        ax.legend(fontsize=8)

    return _svg(draw)
