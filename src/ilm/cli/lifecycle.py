"""Commands for retention: hold, restore, purge, audit."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ilm.cli.app import HomeOption, app, console, err_console, fail, open_service, print_json
from ilm.errors import IlmError, StorageError

hold_app = typer.Typer(help="Legal holds: studies and patients that must never be deleted.", no_args_is_help=True)
app.add_typer(hold_app, name="hold")


def _who(by: Optional[str]) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


ByOption = typer.Option(None, "--by", help="Who does this, for the audit trail (default: the login name).")


@hold_app.command("add")
def hold_add(
    reason: str = typer.Option(..., "--reason", help="Why: a case number, a request."),
    study: Optional[str] = typer.Option(None, "--study", help="Study Instance UID to hold."),
    patient: Optional[str] = typer.Option(None, "--patient", help="Patient ID to hold (all of the patient's studies)."),
    issuer: str = typer.Option("", "--issuer", help="Issuer of the Patient ID, when the archive has several."),
    home: Optional[Path] = HomeOption,
    by: Optional[str] = ByOption,
) -> None:
    """Place a legal hold on a study or a patient."""
    if bool(study) == bool(patient):
        fail("give exactly one of --study or --patient", 2)
    with open_service(home) as service:
        try:
            if study:
                hold_id = service.hold_add("study", study, reason, _who(by))
            else:
                hold_id = service.hold_add("patient", service.patient_key(patient or "", issuer), reason, _who(by))
        except StorageError as exc:  # placed, but not mirrored to an S3 legal hold (WORM tiers)
            fail(str(exc), 1)
        except IlmError as exc:
            fail(str(exc), 2)
    console.print(f"hold {hold_id} placed")


@hold_app.command("remove")
def hold_remove(hold_id: int, home: Optional[Path] = HomeOption, by: Optional[str] = ByOption) -> None:
    """Release a hold by its id (the hold stays in the history)."""
    with open_service(home) as service:
        try:
            row = service.hold_remove(hold_id, _who(by))
        except IlmError as exc:
            fail(str(exc), 1)
    console.print(f"hold {hold_id} on {row.scope} {row.target} released")


@hold_app.command("sync")
def hold_sync(home: Optional[Path] = HomeOption) -> None:
    """Mirror ilm's holds to S3 Object Lock legal holds on WORM tiers again (after a failure)."""
    with open_service(home) as service:
        report = service.hold_sync()
    console.print(f"legal hold ON on {report.held} objects, OFF on {report.released}")
    for p in report.problems:
        err_console.print(f"  not set: {p}", highlight=False)
    if report.problems:
        raise typer.Exit(1)


@hold_app.command("list")
def hold_list(
    home: Optional[Path] = HomeOption,
    all_: bool = typer.Option(False, "--all", help="Include released holds."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """List holds."""
    with open_service(home) as service:
        rows = service.holds(active_only=not all_)
    if json_out:
        print_json(rows)
        return
    table = Table("Id", "Scope", "Target", "Reason", "By", "Placed", "Released")
    for h in rows:
        table.add_row(str(h.id), h.scope, h.target, h.reason, h.created_by, f"{h.created_at:%Y-%m-%d %H:%M}",
                      f"{h.released_at:%Y-%m-%d} by {h.released_by}" if h.released_at else "")
    console.print(table)


label_app = typer.Typer(help="Labels on studies, for policies to match (labels: teaching).", no_args_is_help=True)
app.add_typer(label_app, name="label")


@label_app.command("add")
def label_add(study_uid: str, name: str, home: Optional[Path] = HomeOption, by: Optional[str] = ByOption) -> None:
    """Add a label to a study."""
    with open_service(home) as service:
        try:
            service.label(study_uid, name, present=True, by=_who(by))
        except IlmError as exc:
            fail(str(exc), 1)
    console.print(f"labelled {study_uid} {name!r}")


@label_app.command("remove")
def label_remove(study_uid: str, name: str, home: Optional[Path] = HomeOption, by: Optional[str] = ByOption) -> None:
    """Remove a label from a study."""
    with open_service(home) as service:
        try:
            service.label(study_uid, name, present=False, by=_who(by))
        except IlmError as exc:
            fail(str(exc), 1)
    console.print(f"removed label {name!r} from {study_uid}")


@app.command()
def restore(study_uid: str, home: Optional[Path] = HomeOption, by: Optional[str] = ByOption) -> None:
    """Bring a quarantined (expired, not yet purged) study back."""
    with open_service(home) as service:
        try:
            service.restore(study_uid, _who(by))
        except IlmError as exc:
            fail(str(exc), 1)
    console.print(f"restored {study_uid}")


@app.command()
def purge(
    home: Optional[Path] = HomeOption,
    by: Optional[str] = ByOption,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Delete studies whose quarantine has ended. Holds still veto; a tombstone stays."""
    with open_service(home) as service:
        due = service.purge_due()
        if not due:
            console.print("nothing to purge")
            return
        if not yes:
            size = sum(q.size_bytes for q in due)
            typer.confirm(f"permanently delete {len(due)} studies ({size / 1e9:.2f} GB)?", abort=True)
        report = service.purge(_who(by))
    if json_out:
        print_json(report)
    else:
        console.print(f"purged {len(report.purged)} studies, freed {report.bytes_freed / 1e9:.2f} GB; "
                      f"{report.waiting} still in quarantine"
                      + (f"; dropped {report.released} copies whose WORM lock ended" if report.released else ""))
        for p in report.problems:
            err_console.print(f"  kept: {p}", highlight=False)
    if report.problems:
        raise typer.Exit(1)


audit_app = typer.Typer(help="The audit trail: list, verify (ilm audit), export (ilm audit export).")
app.add_typer(audit_app, name="audit")


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    home: Optional[Path] = HomeOption,
    study: Optional[str] = typer.Option(None, "--study", help="Only entries about this study."),
    plan: Optional[str] = typer.Option(None, "--plan", help="Only entries about this plan."),
    verify: bool = typer.Option(False, "--verify", help="Check the hash chain; exit 1 if it is broken."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """List the audit trail, or verify that no entry was changed or removed."""
    if ctx.invoked_subcommand is not None:
        return
    with open_service(home) as service:
        if verify:
            breaks = service.audit_verify()
            if breaks:
                for b in breaks:
                    err_console.print(f"entry {b.entry_id}: {b.problem}", highlight=False)
                fail(f"audit trail is broken: {len(breaks)} problem(s)", 1)
            console.print("audit trail intact")
            return
        entries = service.audit(study_uid=study, plan_id=plan)
    if json_out:
        print_json(entries)
        return
    table = Table("Id", "When", "Who", "Action", "Study", "Plan", "Rule", "Detail")
    for e in entries:
        table.add_row(str(e.id), f"{e.at:%Y-%m-%d %H:%M:%S}", e.actor, e.action, e.study_uid or "", e.plan_id or "",
                      e.rule_id or "", json.dumps(e.detail)[:80])
    console.print(table)
