"""``ilm audit export``: the audit trail as DICOM audit messages (IHE ATNA) in a file."""

from __future__ import annotations

from datetime import datetime, time, timezone
from pathlib import Path
from typing import Optional

import typer

from ilm.cli.app import HomeOption, console, fail, open_service
from ilm.cli.lifecycle import audit_app

FORMATS = ("atna",)


def _since(text: str) -> datetime:
    """A date (2026-01-31, from its midnight UTC) or a date and time (2026-01-31T08:00, UTC unless given)."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since: {text!r} is not a date such as 2026-01-31 or 2026-01-31T08:00", 2)
    if len(text) == 10:
        at = datetime.combine(at.date(), time(0))
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


@audit_app.command("export")
def export(
    to: Path = typer.Option(..., "--to", help="The file to write (replaced whole when the export succeeds)."),
    since: Optional[str] = typer.Option(None, "--since", help="Only entries at or after this date (UTC)."),
    format_: str = typer.Option("atna", "--format", help="atna: DICOM audit messages (PS3.15 A.5), "
                                                          "one RFC 5424 record per line."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Export the hash-chained audit trail as DICOM audit messages (study deleted, instances accessed)."""
    if format_ not in FORMATS:
        fail(f"--format: {format_!r} is not one of {', '.join(FORMATS)}", 2)
    start = _since(since) if since else None
    with open_service(home) as service:
        try:
            report = service.audit_export(to, since=start)
        except OSError as exc:
            fail(f"--to {to}: cannot write: {exc.strerror or exc}", 2)
    console.print(f"{report.written} audit messages written to {report.path} ({report.entries} trail entries)",
                  highlight=False)
    if report.skipped:
        console.print("without a DICOM audit event (kept in the trail only): "
                      + ", ".join(f"{k} {v}" for k, v in report.skipped.items()), highlight=False)
