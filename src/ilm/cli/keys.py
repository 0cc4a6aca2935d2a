"""``ilm keys``: master keys of encrypted tiers (new, list, rotate, retire). See docs/security.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ilm.cli.app import HomeOption, app, console, err_console, fail, open_service, print_json
from ilm.cli.lifecycle import ByOption, _who
from ilm.encryption import KeyInUse
from ilm.errors import IlmError

keys_app = typer.Typer(help="Master keys of encrypted tiers: new, list, rotate, retire (docs/security.md).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")

TierOption = typer.Option(None, "--tier", help="Only this encrypted tier (and its key file).")
KeyFileOption = typer.Option(None, "--key-file", help="The key-ring file (default: the encrypted tiers' key_file).")


def _bar(label: str, quiet: bool) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True, disable=quiet)


@keys_app.command("new")
def keys_new(
    key_id: str | None = typer.Option(None, "--id", help="Id of the new key (default k<UTC timestamp>)."),
    tier: str | None = TierOption,
    key_file: Path | None = KeyFileOption,
    home: Path | None = HomeOption,
    by: str | None = ByOption,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Add a random 256-bit master key to the key ring and make it the active one:
    new objects are wrapped by it. Existing objects keep their key until 'ilm keys rotate'."""
    with open_service(home) as service:
        try:
            path, key = service.keys_new(key_id=key_id, tier=tier, key_file=key_file, by=_who(by))
        except IlmError as exc:
            fail(str(exc), 2)
    if json_out:
        print_json({"id": key.id, "key_file": str(path), "created": key.created})
    else:
        console.print(f"master key [bold]{key.id}[/] added to {path} and active. Back this file up now: "
                      "an object whose key is lost cannot be read by anyone.", highlight=False)


@keys_app.command("list")
def keys_list(
    tier: str | None = TierOption,
    home: Path | None = HomeOption,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """The master keys, which one is active, and the objects recorded per key and tier."""
    with open_service(home) as service:
        try:
            infos, unchecked = service.keys_list(tier=tier)
        except IlmError as exc:
            fail(str(exc), 2)
    if json_out:
        print_json({"keys": infos, "not_checked": unchecked})
        return
    if not infos:
        console.print("no master keys yet: 'ilm keys new' creates the first one (docs/security.md)", highlight=False)
    for key_file in dict.fromkeys(k.key_file for k in infos):
        table = Table("key", "state", "source", "created", "objects per tier", title=f"key ring {key_file}",
                      title_justify="left")
        for k in (k for k in infos if k.key_file == key_file):
            state = "active" if k.active else ("retired" if k.retired else "readable")
            objects = ", ".join(f"{t}: {n}" for t, n in k.objects.items()) or "-"
            table.add_row(k.id, state, k.source, k.created[:16].replace("T", " ") or "-", objects)
        console.print(table)
    for t, n in unchecked.items():
        if n:
            console.print(f"tier {t}: {n} objects written since the last rotation are not counted "
                          "(wrapped by the key active when written; 'ilm keys rotate' records them)", highlight=False)


@keys_app.command("rotate")
def keys_rotate(
    tier: str | None = TierOption,
    full: bool = typer.Option(False, "--full", help="Read every object's header, also those recorded as done."),
    home: Path | None = HomeOption,
    by: str | None = ByOption,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Re-wrap every object's data key under the active master key, without
    re-encrypting the data. Safe to interrupt and run again: it resumes."""
    with open_service(home) as service:
        try:
            with _bar("re-wrapping", json_out) as bar:
                task = bar.add_task("rotate", total=None)
                report = service.keys_rotate(tier=tier, full=full, by=_who(by),
                                             progress=lambda done, total: bar.update(task, completed=done, total=total))
        except IlmError as exc:
            fail(str(exc), 2)
    out: dict[str, Any] = {"to": report.to, "objects": report.objects, "rewrapped": report.rewrapped,
                           "already": report.already, "gone": report.gone, "from": report.from_keys,
                           "failed": report.failed}
    if json_out:
        print_json(out)
    else:
        for t, k in report.to.items():
            console.print(f"tier {t}: every object now under key {k}" if not report.failed else f"tier {t}: to key {k}",
                          highlight=False)
        console.print(f"{report.objects} objects: {report.rewrapped} re-wrapped, {report.already} already under "
                      f"the active key, {report.gone} gone meanwhile, {len(report.failed)} failed", highlight=False)
        for line in report.failed[:20]:
            err_console.print(f"  {line}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@keys_app.command("retire")
def keys_retire(
    key_id: str = typer.Argument(..., help="The key to retire."),
    key_file: Path | None = KeyFileOption,
    home: Path | None = HomeOption,
    by: str | None = ByOption,
) -> None:
    """Retire a master key: refused while any object still uses it (every object's
    header is read to be sure). A retired key no longer opens anything."""
    with open_service(home) as service:
        try:
            with _bar("checking", False) as bar:
                task = bar.add_task("retire", total=None)
                checked = service.keys_retire(key_id, by=_who(by), key_file=key_file,
                                              progress=lambda done, total: bar.update(task, completed=done, total=total))
        except KeyInUse as exc:
            fail(str(exc), 1)
        except IlmError as exc:
            fail(str(exc), 2)
    console.print(f"key {key_id} retired ({checked} objects checked, none uses it). Keep a backup of it as "
                  "long as backups of objects wrapped by it are kept.", highlight=False)
