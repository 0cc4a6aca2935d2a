"""``ilm tiering``: access-based tiering (cooling days, retrieval policies, prefetch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ilm.cli.app import (
    HomeOption,
    app,
    console,
    err_console,
    fail,
    open_service,
    print_json,
    settings_from,
)
from ilm.cli.archive import human_bytes
from ilm.cli.lifecycle import ByOption, _who
from ilm.cli.policy import _as_of, _print_summary
from ilm.errors import IlmError
from ilm.lifecycle.tiering import tiering_settings

tiering_app = typer.Typer(help="Access-based tiering: cooling days, promotion on read, prefetch of priors.",
                          no_args_is_help=True)
app.add_typer(tiering_app, name="tiering")


@tiering_app.command("run")
def tiering_run(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only preview the cooling moves; store and move nothing."),
    as_of: str | None = typer.Option(None, "--as-of", help="Count idle days as of this day (YYYY-MM-DD); default today."),
    home: Path | None = HomeOption,
    by: str | None = ByOption,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Move the studies nobody read for their tier's cooling_days down one tier.

    The moves are made as a plan (rule cooling:TIER) and applied at once, through
    the same safe move as policies: an interrupted run is finished with
    'ilm apply PLAN --resume', and the audit trail names the plan.
    """
    day = _as_of(as_of)
    who = _who(by)
    with open_service(home) as service:
        try:
            result = service.tiering_plan(as_of=day, by=who, store=not dry_run)
        except IlmError as exc:
            fail(str(exc), 2)
        p = result.plan
        moves = sum(a["studies"] for a in p.summary["actions"] if a["action"] == "transition")
        out: dict[str, Any] = {"plan_id": None if dry_run else p.id, "as_of": day.isoformat(), **p.summary}
        if dry_run or moves == 0:
            if not dry_run:
                out["applied"] = None
        else:
            try:
                with Progress(TextColumn("moving"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                              console=err_console, transient=True, disable=json_out) as bar:
                    task = bar.add_task("apply", total=moves)
                    report = service.apply(p.id, approved_by=who, progress=lambda a, s: bar.advance(task))
            except IlmError as exc:
                fail(str(exc), 2)
            out["applied"] = {"done": report.done, "skipped": report.skipped, "failed": report.failed,
                              "bytes_moved": report.bytes_moved, "stopped": report.stopped}
    if json_out:
        print_json(out)
    else:
        _print_summary(p.summary, None if dry_run else p.id)
        applied = out.get("applied")
        if dry_run:
            console.print("dry run: nothing stored, nothing moved")
        elif applied is None:
            console.print("nothing to move")
        else:
            console.print(f"plan {p.id}: {applied['done']} moved, {len(applied['skipped'])} skipped, "
                          f"{len(applied['failed'])} failed; {human_bytes(applied['bytes_moved'])} moved", highlight=False)
            for uid, why in applied["skipped"]:
                console.print(f"  skipped {uid}: {why}", highlight=False)
            for uid, why in applied["failed"]:
                err_console.print(f"  failed {uid}: {why}", highlight=False)
            if applied["stopped"]:
                console.print(applied["stopped"])
    if isinstance(out.get("applied"), dict) and out["applied"]["failed"]:
        raise typer.Exit(1)


@tiering_app.command("show")
def tiering_show(home: Path | None = HomeOption, json_out: bool = typer.Option(False, "--json")) -> None:
    """Each tier's cooling days, retrieval policy and prefetch settings."""
    settings = settings_from(home)
    shown = tiering_settings(settings)
    rows: list[dict[str, Any]] = shown["tiers"]
    if json_out:
        print_json(shown)
        return
    table = Table("Tier", "Cooling", "Retrieval policy", "Prefetch")
    for r in rows:
        cooling = f"{r['cooling_days']} days -> {r['moves_to']}" if r["cooling_days"] and r["moves_to"] else "-"
        pf = r["prefetch"]
        table.add_row(r["tier"], cooling, r["retrieval_policy"] + (" (archive: needs recall)" if r["archive"] else ""),
                      f"{pf['count']} priors, {pf['match']}, <= {pf['max_age_years']} y" if pf else "-")
    console.print(table)
    console.print(f"promotions start at most {settings.lifecycle.promotions_per_minute} per minute "
                  "(0: no cap); reads through export never promote", highlight=False)
