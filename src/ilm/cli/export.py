"""ilm export: studies written out of the archive into a folder (or as a DICOM file-set with DICOMDIR)."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from typing import Optional

import typer

from ilm.cli.app import HomeOption, app, console, fail, open_service, print_json
from ilm.errors import IlmError, InvalidUID, NotFound


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


@app.command("export")
def export(
    study_uids: list[str] = typer.Argument(..., help="Study Instance UIDs to export."),
    to: Path = typer.Option(..., "--to", help="The folder to write into (created if missing)."),
    dicomdir: bool = typer.Option(False, "--dicomdir", help="Write a DICOM file-set: files named as on media "
                                  "(PTxxxxxx/STxxxxxx/SExxxxxx/IMxxxxxx) and a DICOMDIR. The folder must not "
                                  "hold a DICOMDIR yet."),
    home: Optional[Path] = HomeOption,
    by: Optional[str] = typer.Option(None, "--by", help="Who exports, for the audit trail (default: the login name)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Export studies as files, each the stored bytes unchanged (SHA-256 checked on the way).

    Without --dicomdir the files are STUDY/SERIES/SOP.dcm. Files are written in a
    staging folder first and linked into place only when every one is ready; an
    existing file with the same bytes is kept, one with other bytes refuses the
    whole export. A study on an archive tier must be restored first (ilm recall).
    The export counts as an access of each study and is audited (trail entry
    study.export, DICOM audit message Export). Exit 2 for bad input (a UID, an
    unknown study, a folder that cannot take the export), 1 when the archive
    cannot deliver now (not restored, a tier failing).
    """
    from ilm.study_export import ExportRefused  # pydicom: imported by the commands that export only

    who = by or _login()
    with open_service(home) as service:
        try:
            report = service.export(study_uids, to, dicomdir=dicomdir, by=who, address=socket.gethostname(),
                                    interface="cli")
        except (InvalidUID, NotFound, ExportRefused) as exc:
            fail(str(exc), 2)
        except IlmError as exc:
            fail(f"nothing exported: {exc}", 1)
    if json_out:
        print_json(report)
        return
    console.print(f"exported {len(report.studies)} studies, {sum(report.studies.values())} instances "
                  f"({report.bytes:,} bytes) to {report.to}: {report.written} files written, "
                  f"{report.unchanged} already there", highlight=False, soft_wrap=True)
