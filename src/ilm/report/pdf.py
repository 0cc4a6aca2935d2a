"""The report as a PDF (``ilm report --pdf FILE``): the HTML report's sections, tables and charts on
A4 pages, laid out with matplotlib (its PDF backend: no other library, no system package).

A page is filled from the top: lines of text, charts (the same ``draw_*`` calls
as the HTML report) and tables (matplotlib tables), each taking its height; what
does not fit goes on the next page, a long table continuing there under its
header.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from ilm.report import charts
from ilm.report.html import _bytes, _money, _shown_scenario, chart_drawers

__all__ = ["write_pdf"]

PAGE = (8.27, 11.69)    # A4 portrait, inches
MARGIN = 0.6            # inches
LINE = 0.19             # a line of text
ROW = 0.2               # a table row
CHART = 3.3
WRAP = 118              # characters of a line of notes


def _pct(x: float, d: int = 1) -> str:
    return f"{x:.{d}%}"


class _Pages:
    def __init__(self, pdf: PdfPages) -> None:
        self.pdf = pdf
        self.fig: Figure | None = None
        self.y = 0.0  # inches from the top of the page used so far
        self.pages = 0

    def _room(self, height: float) -> None:
        if self.fig is None or self.y + height > PAGE[1] - MARGIN:
            self.flush()
            self.fig = Figure(figsize=PAGE)
            self.y = MARGIN
            self.pages += 1

    def flush(self) -> None:
        if self.fig is not None:
            self.fig.text(0.5, 0.25 / PAGE[1], f"ilm report, page {self.pages}", ha="center", fontsize=7,
                          color="#777777")
            self.pdf.savefig(self.fig)  # type: ignore[no-untyped-call]
            self.fig = None

    def _axes(self, height: float, pad: float = 0.0) -> Any:
        assert self.fig is not None
        bottom = PAGE[1] - self.y - height
        ax = self.fig.add_axes((MARGIN / PAGE[0] + pad, bottom / PAGE[1], (PAGE[0] - 2 * MARGIN) / PAGE[0] - pad,
                                height / PAGE[1]))
        self.y += height
        return ax

    def text(self, text: str, *, size: float = 8.5, bold: bool = False, gap: float = 0.0) -> None:
        lines = textwrap.wrap(text, WRAP if size < 10 else 70) or [""]
        for line in lines:
            self._room(LINE * size / 8.5 + gap)
            assert self.fig is not None
            self.y += gap
            self.fig.text(MARGIN / PAGE[0], 1 - (self.y + LINE * 0.8 * size / 8.5) / PAGE[1], line, fontsize=size,
                          fontweight="bold" if bold else "normal")
            self.y += LINE * size / 8.5
            gap = 0.0

    def heading(self, text: str) -> None:
        self._room(LINE * 2 + CHART)  # a heading does not end a page on its own
        self.text(text, size=13, bold=True, gap=0.15)

    def chart(self, draw: charts.Draw) -> None:
        self._room(CHART + 0.7)
        self.y += 0.3  # the chart's title sits above its axes
        ax = self._axes(CHART, pad=0.06)  # room for the y axis' labels
        draw(ax)
        self.y += 0.4  # and the x axis' labels below

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        rows = [[str(c) for c in r] for r in rows] or [["(none)"] + [""] * (len(header) - 1)]
        i = 0
        while i < len(rows):
            self._room(ROW * 3)
            fit = max(1, int((PAGE[1] - MARGIN - self.y) / ROW) - 2)
            chunk = rows[i:i + fit]
            ax = self._axes(ROW * (len(chunk) + 1))
            ax.axis("off")
            t = ax.table(cellText=chunk, colLabels=list(header), loc="upper left", cellLoc="right",
                         colLoc="right", bbox=(0.0, 0.0, 1.0, 1.0))
            t.auto_set_font_size(False)
            t.set_fontsize(7)
            for (r, c), cell in t.get_celld().items():
                cell.set_edgecolor("#dddddd")
                if c == 0:
                    cell.set_text_props(ha="left")
                if r == 0:
                    cell.set_facecolor("#f2f2f2")
            self.y += 0.15
            i += len(chunk)


def write_pdf(data: dict[str, Any], path: Path) -> int:
    """Write the report (``ArchiveService.report``) to ``path`` as a PDF; the number of pages."""
    cost, stats, plans = data["cost"], data["stats"], data["plans"]
    draw = chart_drawers(data)
    shown = _shown_scenario(cost)
    scen = cost["scenarios"]
    with matplotlib.rc_context(charts.RC), PdfPages(path, metadata={"Title": f"ilm report as of {data['as_of']}",
                                                                     "Creator": "ilm report", "CreationDate": None}) as pdf:
        p = _Pages(pdf)
        t = stats["totals"]
        p.text("Archive cost and analytics", size=16, bold=True)
        p.text(f"As of {data['as_of']}; generated {data['generated_at']} by ilm report. {t['studies']:,} studies of "
               f"{t['patients']:,} patients, {t['instances']:,} instances, {_bytes(t['bytes'])}.")

        p.heading("Cost today")
        p.table(["Tier", "Stored", "per GB-month", "retrieval per GB", "PUT / GET per 1,000", "minimum days"],
                [[n, _bytes(cost["current"]["bytes_by_tier"].get(n, 0)), pr["per_gb_month"], pr["retrieval_per_gb"],
                  f"{pr['put_per_1000']} / {pr['get_per_1000']}", pr["min_storage_days"]]
                 for n, pr in cost["prices"].items()])
        cur, g = cost["current"], cost["growth"]
        p.text(f"Monthly cost now: {_money(cur['monthly_total'])} (storage {_money(cur['monthly_storage'])}, reads "
               f"{_money(cur['monthly_retrieval'])}). Growth: {_bytes(g['bytes_per_month'])} a month, "
               f"{_pct(g['yearly_rate'])} a year ({g['source']}).")

        p.heading(f"Cost projection over {cost['years']} years")
        p.chart(draw["cost"])
        p.table(["Year", *[s["name"] for s in scen]],
                [[i + 1, *[_money(s["years"][i]["total"]) for s in scen]] for i in range(cost["years"])]
                + [["total", *[_money(s["total"]) for s in scen]],
                   [f"savings against {scen[0]['name']}", "",
                    *[f"{_money(s['savings'])} ({_pct(s['savings_share'], 0)})" for s in scen[1:]]]])
        for s in scen:
            p.text(f"{s['name']}: per year by part", bold=True, gap=0.1)
            p.table(["Year", "storage", "reads", "moves", "ingest", "total", "cumulative", "saved"],
                    [[y["year"], _money(y["storage"]), _money(y["retrieval"]), _money(y["moves"]), _money(y["ingest"]),
                      _money(y["total"]), _money(y["cumulative"]), _money(y["cumulative_savings"])] for y in s["years"]])
            if s["kind"] == "policy":
                p.text(f"Today this policy moves {_bytes(s['bytes_moved_now'])} ({s['studies_moved_now']:,} studies) "
                       f"for a one-time {_money(s['one_time_now'])}, deletes {_bytes(s['bytes_deleted_now'])}, and "
                       f"then costs {_money(s['monthly_after'])} a month.")
        smp = cost["sample"]
        p.text(f"Projected from {smp['studies']:,} of {smp['of']:,} studies"
               f"{' (an even sample scaled to the catalog bytes)' if smp['studies'] < smp['of'] else ''}; new data "
               f"follows the paths of {smp['templates']:,} studies received in the last year. See docs/cost.md.",
               gap=0.1)

        p.heading("Storage by tier over time")
        p.chart(draw["storage"])
        p.text(("Before today: the catalog's snapshots of storage by tier at each month's end (months before the "
                "first snapshot reconstructed from when studies arrived, when they were quarantined and the moves "
                "journal). " if stats.get("tier_history") else
                "No snapshot of storage by tier recorded yet (ilm stats --snapshot; ilm serve records one a day). ")
               + f"From today: the projection of {shown['name']}.")

        p.heading("What the policies do today")
        p.chart(draw["plans"])
        p.chart(draw["vetoes"])
        for plan in plans:
            p.text(f"{plan['name']} ({plan['policy']})", bold=True, gap=0.1)
            summary = plan["summary"]
            p.table(["Action", "Rule", "To tier", "Studies", "Instances", "Size"],
                    [[a["action"], a["rule"], a["tier"] or "", f"{a['studies']:,}", f"{a['instances']:,}",
                      _bytes(a["bytes"])] for a in summary["actions"]])
            p.table(["Protection", "Expiries vetoed"],
                    [[k, f"{n:,}"] for k, n in summary["vetoes"].items()]
                    + [[f"kept for a missing fact: {k}", f"{n:,}"] for k, n in summary.get("unknown_facts", {}).items()])
        if not plans:
            p.text("No policy given (ilm report --policy FILE).")

        p.heading("How the archive is used")
        p.chart(draw["reads"])
        p.table(["Study age", "Reads", "Instances read", "Studies now", "Read per month"],
                [[b["age"], f"{b['reads']:,}", f"{b['instances_read']:,}", f"{b['studies']:,}",
                  _pct(b["monthly_read_rate"], 2)] for b in stats["reads_by_age"]["buckets"]])
        p.table(["Never read after", "Studies older", "Never read", "Share"],
                [[f"{r['days']} days", f"{r['studies_older']:,}", f"{r['never_read_after']:,}", _pct(r["share"])]
                 for r in stats["never_read_after"]])
        pat = stats["patients"]
        p.text(f"Patients with priors (2 or more studies): {pat['with_priors']:,} of {pat['patients']:,} "
               f"({_pct(pat['share'])}).")

        p.heading("What the archive holds")
        p.chart(draw["growth"])
        for title, rows in (("By modalities in study", stats["by_modality"]), ("By study year", stats["by_year"]),
                            ("By tier", stats["by_tier"]), ("By study size", stats["by_size"])):
            p.table([title, "Studies", "Instances", "Size", "Share"],
                    [[r["key"], f"{r['studies']:,}", f"{r['instances']:,}", _bytes(r["bytes"]), _pct(r["share"])]
                     for r in rows])
        p.table(["Largest studies", "Date", "Modalities", "Instances", "Size", "Tiers"],
                [[r["study_uid"], r["study_date"] or "", r["modalities"].replace("\\", "+"), f"{r['instances']:,}",
                  _bytes(r["size_bytes"]), r["tiers"].replace("\\", "+")] for r in stats["largest_studies"]])
        p.flush()
        return p.pages
