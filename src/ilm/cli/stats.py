"""ilm stats: how big the archive is and how it is used (docs/cost.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ilm.cli.app import HomeOption, app, console, open_service, print_json
from ilm.cli.archive import human_bytes
from ilm.cli.policy import _as_of

__all__ = ["stats"]


def _table(title: str, first: str, rows: list[dict[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column(first)
    for name in ("Studies", "Instances", "Size", "Share"):
        t.add_column(name, justify="right")
    for r in rows:
        t.add_row(str(r["key"]), f"{r['studies']:,}", f"{r['instances']:,}", human_bytes(r["bytes"]),
                  f"{r['share']:.1%}")
    return t


@app.command()
def stats(
    home: Optional[Path] = HomeOption,
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Ages and windows as of this day (YYYY-MM-DD)."),
    largest: int = typer.Option(10, "--largest", min=0, max=1000, help="How many of the largest studies to list."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    snapshot: bool = typer.Option(False, "--snapshot", help="Record today's storage by tier first (the first "
                                  "snapshot also reconstructs the past; docs/cost.md)."),
) -> None:
    """Composition (modality, study year, tier, size), growth per month, storage by tier over time,
    reads by study age, studies never read after N days, patients with priors, largest studies."""
    day = _as_of(as_of)
    with open_service(home) as service:
        if snapshot:
            snap = service.snapshot_tiers()
            if not json_out:
                tiers = ", ".join(f"{t.tier} {t.studies:,} studies {human_bytes(t.size_bytes)}" for t in snap.tiers)
                back = (f"; reconstructed {snap.backfilled_months} months and {snap.backfilled_days} days of the past"
                        if snap.backfilled_months or snap.backfilled_days else "")
                console.print(f"recorded storage by tier on {snap.day}: {tiers or 'nothing stored'}{back}",
                              highlight=False)
        s = service.stats(today=day, largest=largest)
    if json_out:
        print_json(s)
        return
    t = s["totals"]
    console.print(f"[bold]{t['studies']:,} studies[/] of {t['patients']:,} patients, {t['instances']:,} instances, "
                  f"{human_bytes(t['bytes'])} (as of {s['as_of']})", highlight=False)
    console.print(_table("By modalities in study", "Modalities", s["by_modality"]))
    console.print(_table("By study year", "Year", s["by_year"]))
    console.print(_table("By tier", "Tier", s["by_tier"]))
    console.print(_table("By study size", "Size", s["by_size"]))
    g = s["growth"]
    tail = g["by_month"][-12:]
    gt = Table(title="Growth: the last 12 months received", title_justify="left")
    for c in ("Month", "Studies", "Size"):
        gt.add_column(c, justify="right" if c != "Month" else "left")
    for r in tail:
        gt.add_row(r["month"], f"{r['studies']:,}", human_bytes(r["bytes"]))
    console.print(gt)
    console.print(f"received per month (last 12 full months): {human_bytes(g['bytes_per_month'])}; "
                  f"yearly growth of that rate: {g['yearly_rate']:+.1%}", highlight=False)
    hist = s["tier_history"][-12:]
    if hist:
        names = sorted({t for m in hist for t in m["tiers"]})
        ht = Table(title="Storage by tier over time (end of month; * reconstructed)", title_justify="left")
        for c in ("Month", *names, "Received"):
            ht.add_column(c, justify="left" if c == "Month" else "right")
        for m in hist:
            ht.add_row(m["month"] + (" *" if m["reconstructed"] else ""),
                       *[human_bytes(m["tiers"][t]["bytes"]) if t in m["tiers"] else "" for t in names],
                       human_bytes(m["received"]["bytes"]))
        console.print(ht)
    ra = s["reads_by_age"]
    rt = Table(title=f"Reads by study age (last {ra['window_days']} days)", title_justify="left")
    for c in ("Study age", "Reads", "Instances read", "Studies now", "Read per month"):
        rt.add_column(c, justify="right" if c != "Study age" else "left")
    for r in ra["buckets"]:
        rt.add_row(r["age"], f"{r['reads']:,}", f"{r['instances_read']:,}", f"{r['studies']:,}",
                   f"{r['monthly_read_rate']:.3%}")
    console.print(rt)
    for r in s["never_read_after"]:
        console.print(f"never read after {r['days']} days: {r['never_read_after']:,} of {r['studies_older']:,} "
                      f"studies older than that ({r['share']:.1%})", highlight=False)
    p = s["patients"]
    console.print(f"patients with priors (2 or more studies): {p['with_priors']:,} of {p['patients']:,} "
                  f"({p['share']:.1%})", highlight=False)
    lt = Table(title="Largest studies", title_justify="left")
    for c in ("Study Instance UID", "Date", "Modalities", "Instances", "Size", "Tiers"):
        lt.add_column(c, justify="right" if c in ("Instances", "Size") else "left")
    for r in s["largest_studies"]:
        lt.add_row(r["study_uid"], str(r["study_date"] or ""), r["modalities"].replace("\\", "+"),
                   f"{r['instances']:,}", human_bytes(r["size_bytes"]), r["tiers"].replace("\\", "+"))
    console.print(lt)
