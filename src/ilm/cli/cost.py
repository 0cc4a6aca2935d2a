"""ilm cost: monthly cost now and a projection over N years, policies side by side (docs/cost.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from ilm.analytics import CostOptions
from ilm.cli.app import HomeOption, app, console, err_console, fail, open_service, print_json
from ilm.cli.archive import human_bytes
from ilm.cli.policy import _as_of
from ilm.cost.shaping import money_text
from ilm.errors import IlmError
from ilm.policy import PolicyError
from ilm.service import ArchiveService

__all__ = ["cost", "run_cost", "print_cost", "PolicyOption", "YearsOption", "GrowthGbOption",
           "GrowthPercentOption", "SampleOption"]

PolicyOption = typer.Option(None, "--policy", help="A policy file to project (repeatable).")
YearsOption = typer.Option(10, "--years", min=1, max=50, help="Years to project.")
GrowthGbOption = typer.Option(None, "--growth-gb-per-month", min=0,
                              help="New data per month (default: from the catalog's history).")
GrowthPercentOption = typer.Option(None, "--growth-percent", min=-100,
                                   help="Yearly growth of the monthly new data, in percent.")
SampleOption = typer.Option(1000, "--sample", min=1, help="Studies simulated (all in a smaller archive).")


_money = money_text


def run_cost(service: ArchiveService, policies: list[Path], **kw: Any) -> dict[str, Any]:
    """service.cost with a bad policy or option reported as a usage error (exit 2)."""
    for p in policies:
        if not p.is_file():
            fail(f"--policy {p}: no such file", 2)
    try:
        return service.cost(policies, **kw)
    except PolicyError as exc:
        for i in exc.issues:
            err_console.print(str(i), highlight=False, soft_wrap=True)
        fail("a policy has errors; nothing was projected", 2)
    except IlmError as exc:
        fail(str(exc), 2)


def print_cost(r: dict[str, Any], *, brief: bool = False) -> None:
    cur = r["current"]
    tiers = ", ".join(f"{t} {human_bytes(b)}" for t, b in cur["bytes_by_tier"].items()) or "nothing stored"
    console.print(f"[bold]now[/]: {tiers}; {_money(cur['monthly_total'])} a month "
                  f"(storage {_money(cur['monthly_storage'])}, reads {_money(cur['monthly_retrieval'])})",
                  highlight=False)
    g = r["growth"]
    console.print(f"growth: {human_bytes(g['bytes_per_month'])} a month, {g['yearly_rate']:+.1%} a year "
                  f"({g['source']})", highlight=False)
    scen = r["scenarios"]
    if not brief:
        t = Table(title=f"Cost per year over {r['years']} years (savings against '{scen[0]['name']}')",
                  title_justify="left")
        t.add_column("Year", justify="right")
        for s in scen:
            t.add_column(s["name"], justify="right")
        for i in range(r["years"]):
            cells = []
            for s in scen:
                y = s["years"][i]
                cells.append(_money(y["total"]) + (f"\n[green]-{_money(y['savings'])}[/]" if s is not scen[0] and
                                                   y["savings"] > 0 else
                                                   f"\n[red]+{_money(-y['savings'])}[/]" if s is not scen[0]
                                                   and y["savings"] < 0 else ""))
            t.add_row(str(i + 1), *cells)
        t.add_row("[bold]total[/]", *[f"[bold]{_money(s['total'])}[/]" for s in scen])
        t.add_row("savings", "", *[f"{_money(s['savings'])} ({s['savings_share']:.0%})" for s in scen[1:]])
        console.print(t)
    for s in scen[1:]:
        line = (f"{s['name']}: {_money(s['total'])} over {r['years']} years, saves {_money(s['savings'])} "
                f"({s['savings_share']:.0%}) against {scen[0]['name']}")
        if s["kind"] == "policy":
            line += (f"; now: moves {human_bytes(s['bytes_moved_now'])} for {_money(s['one_time_now'])} once, "
                     f"deletes {human_bytes(s['bytes_deleted_now'])}, then {_money(s['monthly_after'])} a month")
        console.print(line, highlight=False, soft_wrap=True)
    smp = r["sample"]
    if smp["studies"] < smp["of"]:
        console.print(f"(projected from a sample of {smp['studies']:,} of {smp['of']:,} studies; docs/cost.md)",
                      highlight=False)


@app.command()
def cost(
    policy: Optional[list[Path]] = PolicyOption,
    years: int = YearsOption,
    growth_gb: Optional[float] = GrowthGbOption,
    growth_percent: Optional[float] = GrowthPercentOption,
    sample: int = SampleOption,
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Project from this day (YYYY-MM-DD)."),
    home: Optional[Path] = HomeOption,
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Cost now and per year over N years: everything on the first tier, the archive as it is, and
    each --policy; with the savings against keeping everything on the first tier."""
    day = _as_of(as_of)
    opts = CostOptions(years=years, growth_gb_per_month=growth_gb, growth_percent=growth_percent, sample=sample)
    with open_service(home) as service:
        r = run_cost(service, list(policy or []), today=day, options=opts)
    if json_out:
        print_json(r)
        return
    print_cost(r)
