"""ilm verify: re-read stored copies and check their SHA-256 (fixity)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Column, Table

from ilm.cli.app import HomeOption, app, console, err_console, fail, open_service, print_json
from ilm.cli.archive import human_bytes
from ilm.errors import ConfigError, IlmError


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


@app.command()
def verify(
    tier: Optional[str] = typer.Option(None, "--tier", help="Only this tier (an archive tier is checked only when named)."),
    sample: float = typer.Option(100.0, "--sample", help="Check this percentage of the copies, chosen at random."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sample: the same seed checks the same copies."),
    study: Optional[str] = typer.Option(None, "--study", help="Only the copies of this Study Instance UID."),
    include_archive: bool = typer.Option(False, "--include-archive", help="Also read archive tiers (may cost retrieval fees)."),
    mb_per_s: Optional[float] = typer.Option(None, "--mb-per-s", help="Read rate limit (default fixity.verify_mb_per_s; 0 = none)."),
    repair: bool = typer.Option(True, "--repair/--no-repair", help="Repair bad or missing copies from another verified copy."),
    status: bool = typer.Option(False, "--status", help="Only show copies by fixity state and how many are due; read nothing."),
    home: Optional[Path] = HomeOption,
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Re-read stored copies and check their SHA-256 against the catalog. Bad or
    missing copies are marked (never served again), audited and repaired from
    another verified copy when there is one. Exit code 1 when bad, missing or
    unreadable copies remain, 2 for a usage error."""
    if mb_per_s is not None and mb_per_s < 0:
        fail(f"--mb-per-s {mb_per_s:g}: must be 0 (no limit) or more", 2)
    if status:
        _status(home, json_out)
        return
    with open_service(home) as service:
        with Progress(TextColumn("verifying"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TextColumn("{task.fields[copies]} copies"), TimeRemainingColumn(),
                      console=err_console, transient=True, disable=json_out) as bar:
            task = bar.add_task("verify", total=None, copies=0)

            def start(copies: int, nbytes: int) -> None:
                bar.update(task, total=max(nbytes, 1))

            def tick(copies: int, nbytes: int) -> None:
                bar.update(task, advance=nbytes, copies=int(bar.tasks[task].fields["copies"]) + copies)

            try:
                report = service.verify(tier=tier, study_uid=study, sample_percent=sample, seed=seed,
                                        include_archive=include_archive, mb_per_s=mb_per_s, repair=repair,
                                        by=_who(), on_start=start, progress=tick)
            except ConfigError as exc:
                fail(str(exc), 2)
            except IlmError as exc:
                fail(str(exc), 1)
    if json_out:
        out = {k: getattr(report, k) for k in ("tiers", "candidates", "objects", "bytes", "ok", "bad", "missing",
                                               "unreadable", "repaired", "replicated", "skipped_archive", "problems")}
        out["remaining"] = report.remaining
        out["replica_problems"] = report.replica_problems
        print_json(out)
    else:
        for name, n in report.skipped_archive.items():
            err_console.print(f"skipped archive tier {name!r} ({n} copies): reading it may need a restore and cost "
                              f"retrieval fees; check it with --tier {name}", highlight=False)
        if report.problems:
            table = Table(Column("Tier"), Column("Object", overflow="fold"), Column("State"),
                          Column("What became of it", overflow="fold"), title="Copies with a problem")
            for p in report.problems:
                fate = f"repaired from {p.repaired_from}" if p.repaired_from else f"kept: {p.kept_because}"
                table.add_row(p.tier, p.key, p.state, f"{p.why}\n{fate}")
            console.print(table)
        sampled = f" (a {sample:g}% sample of {report.candidates})" if sample < 100 else ""
        console.print(
            f"{report.objects} copies{sampled}, {human_bytes(report.bytes)} on {', '.join(report.tiers) or 'no tier'}: "
            f"{report.ok} ok, {report.bad} bad, {report.missing} missing, {report.unreadable} unreadable, "
            f"{report.repaired} repaired, {report.replicated} replica copies written", highlight=False)
        for text in report.replica_problems:
            err_console.print(f"[yellow]warning:[/] {text} (the primary copy is safe; the next run retries)",
                              highlight=False)
        if report.remaining:
            console.print(f"[bold red]{report.remaining} copies are still bad, missing or unreadable[/] "
                          "(see docs/operations.md, 'A bad copy')", highlight=False)
    if report.remaining:
        raise typer.Exit(1)


def _status(home: Optional[Path], json_out: bool) -> None:
    """Copies on the online tiers by state and due for a check (fixity.scrub_interval_days)."""
    with open_service(home) as service:
        st = service.fixity_status()
        days = service.settings.fixity.scrub_interval_days
    if json_out:
        print_json({"verified": st.verified, "bad": st.bad, "missing": st.missing, "due": st.due,
                    "scrub_interval_days": days})
    else:
        console.print(f"{st.verified} verified, {st.bad} bad, {st.missing} missing copies on the online tiers; "
                      f"{st.due} not checked in the last {days} days", highlight=False)
    if st.bad or st.missing:
        raise typer.Exit(1)
