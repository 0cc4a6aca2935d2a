"""Commands for the archive core: init, import, studies, show."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ilm.cli.app import HomeOption, app, console, err_console, fail, open_service, print_json
from ilm.config import default_home, write_default_config
from ilm.errors import ConfigError
from ilm.models import IngestStatus, StudyFilter
from ilm.service import iter_files


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


@app.command()
def init(home: Optional[Path] = HomeOption, force: bool = typer.Option(False, help="Overwrite an existing config.")) -> None:
    """Write a commented default config (ilm.toml) into the home folder."""
    try:
        path = write_default_config((home or default_home()).absolute(), overwrite=force)
    except ConfigError as exc:
        fail(str(exc), 2)
    console.print(f"wrote {path}")


@app.command("import")
def import_(
    paths: list[Path] = typer.Argument(..., help="Files and folders (recursive) to import."),
    home: Optional[Path] = HomeOption,
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Import DICOM files and folders; report stored, duplicates, conflicts and rejected."""
    for p in paths:
        if not p.exists():
            fail(f"{p}: no such file or folder", 2)
    with open_service(home) as service:
        files = list(iter_files(paths))
        with Progress(
            TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
            console=err_console, transient=True, disable=json_out or not err_console.is_terminal and False,
        ) as bar:
            task = bar.add_task("import", total=len(files))

            def tick(r: object) -> None:
                bar.advance(task)

            report = service.import_paths(files, progress=tick)
    if json_out:
        print_json(
            {
                "stored": report.stored, "duplicates": report.duplicates, "conflicts": report.conflicts,
                "rejected": report.rejected, "bytes_stored": report.bytes_stored,
                "problems": [{"status": r.status.value, "source": r.source, "reason": r.reason,
                              "sop_instance_uid": r.sop_instance_uid, "kept_aside_at": r.kept_aside_at}
                             for r in report.problems],
            }
        )
    else:
        console.print(
            f"stored {report.stored} ({human_bytes(report.bytes_stored)}), duplicates {report.duplicates}, "
            f"conflicts {report.conflicts}, rejected {report.rejected}"
        )
        for r in report.problems:
            tag = "conflict" if r.status is IngestStatus.CONFLICT else "rejected"
            extra = f" (kept aside at {r.kept_aside_at})" if r.kept_aside_at else ""
            console.print(f"  {tag}: {r.source}: {r.reason}{extra}", highlight=False, soft_wrap=True)
    if report.rejected or report.conflicts:
        raise typer.Exit(1)


def _date(value: Optional[str], name: str) -> Optional[date]:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{name}: {value!r} is not a date (YYYY-MM-DD)", 2)


@app.command()
def studies(
    home: Optional[Path] = HomeOption,
    patient_id: Optional[str] = typer.Option(None, "--patient-id", help="Exact Patient ID."),
    date_from: Optional[str] = typer.Option(None, "--from", help="Study date on or after (YYYY-MM-DD)."),
    date_to: Optional[str] = typer.Option(None, "--to", help="Study date on or before (YYYY-MM-DD)."),
    modality: Optional[str] = typer.Option(None, "--modality", help="A modality in the study (CT, MR, MG ...)."),
    limit: int = typer.Option(100, min=1, max=100000),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """List stored studies, newest first."""
    flt = StudyFilter(patient_id=patient_id, date_from=_date(date_from, "--from"), date_to=_date(date_to, "--to"),
                      modality=modality, limit=limit)
    with open_service(home) as service:
        rows = service.studies(flt)
    if json_out:
        print_json(rows)
        return
    table = Table("Study Instance UID", "Patient", "Date", "Modalities", "Series", "Instances", "Size", "Tiers")
    for s in rows:
        table.add_row(s.study_instance_uid, s.patient_id, str(s.study_date or ""), "/".join(s.modalities),
                      str(s.series_count), str(s.instance_count), human_bytes(s.size_bytes), ",".join(s.tiers))
    console.print(table)
    console.print(f"{len(rows)} studies")


@app.command()
def show(study_uid: str, home: Optional[Path] = HomeOption, json_out: bool = typer.Option(False, "--json")) -> None:
    """Show one study: series, instance count, bytes, tiers holding it, checksum state."""
    with open_service(home) as service:
        d = service.study(study_uid)
    if d is None:
        fail(f"no study {study_uid!r} in the catalog", 1)
    if json_out:
        print_json(d)
        return
    s = d.summary
    console.print(f"[bold]Study[/] {s.study_instance_uid}", highlight=False)
    console.print(f"  patient {s.patient_id} {s.patient_name}  born {d.patient_birth_date or '?'}  sex {d.patient_sex or '?'}  age {d.patient_age or '?'}", highlight=False)
    console.print(f"  date {s.study_date or '?'}  accession {s.accession_number}  {s.description}", highlight=False)
    console.print(f"  {s.series_count} series, {s.instance_count} instances, {human_bytes(s.size_bytes)}; checksums: {d.checksum_state}", highlight=False)
    table = Table("Series Instance UID", "Modality", "No.", "Description", "Instances", "Size")
    for se in d.series:
        table.add_row(se.series_instance_uid, se.modality, str(se.number or ""), se.description, str(se.instance_count), human_bytes(se.size_bytes))
    console.print(table)
    locked = any(lo.locked_until for lo in d.locations)  # copies on WORM tiers (docs/security.md)
    loc = Table("Tier", "State", "Instances", "Size", "Last verified", *(["Locked until"] if locked else []))
    for lo in d.locations:
        loc.add_row(lo.tier, lo.state, str(lo.instance_count), human_bytes(lo.size_bytes), str(lo.verified_at_newest or ""),
                    *([f"{lo.locked_until:%Y-%m-%d %H:%M}" if lo.locked_until else ""] if locked else []))
    console.print(loc)
