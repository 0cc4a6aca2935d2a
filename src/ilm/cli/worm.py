"""``ilm worm``: immutable (WORM) tiers and what they hold under lock (docs/security.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ilm.cli.app import HomeOption, app, console, open_service, print_json
from ilm.cli.archive import human_bytes

worm_app = typer.Typer(help="Immutable (WORM) tiers: locked copies, copies kept until their lock ends.",
                       no_args_is_help=True)
app.add_typer(worm_app, name="worm")


@worm_app.command("status")
def worm_status(home: Optional[Path] = HomeOption, json_out: bool = typer.Option(False, "--json")) -> None:
    """Per WORM tier: its mode, the copies locked now and until when, and the copies moves
    kept only for their lock (dropped by the next ilm apply or ilm purge after their date)."""
    with open_service(home) as service:
        rows = service.worm_status()
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no WORM tier (set worm and retain_days on a tier: docs/security.md)")
        return
    t = Table("Tier", "Mode", "Retain days", "Locked copies", "Locked bytes", "Locked until (latest)",
              "Kept after moves", "Kept bytes", "First release")
    for r in rows:
        t.add_row(r.tier, r.worm, str(r.retain_days), str(r.locked), human_bytes(r.locked_bytes),
                  f"{r.locked_until:%Y-%m-%d %H:%M}" if r.locked_until else "", str(r.retained),
                  human_bytes(r.retained_bytes), f"{r.next_release:%Y-%m-%d %H:%M}" if r.next_release else "")
    console.print(t)
