"""``ilm tokens create|list|revoke``: API tokens for the HTTP front-end (docs/security.md)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ilm.cli.app import HomeOption, app, console, err_console, fail, open_service, print_json
from ilm.cli.lifecycle import _who
from ilm.errors import ConfigError, NotFound
from ilm.policy.durations import DurationError, parse_period
from ilm.security.roles import ROLES

tokens_app = typer.Typer(help="API tokens and roles for the HTTP front-end (DICOMweb, REST).", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


def _when(t: Optional[datetime]) -> str:
    return f"{t.astimezone():%Y-%m-%d %H:%M}" if t else ""


@tokens_app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="What the token is for, e.g. 'viewer-ward3' (unique among active tokens)."),
    role: str = typer.Option(..., "--role", help=f"One of {', '.join(ROLES)} (each includes the ones before it)."),
    expires: Optional[str] = typer.Option(None, "--expires", help="Valid for this period (P90D, P1Y, 30d); default: until revoked."),
    by: Optional[str] = typer.Option(None, "--by", help="Who creates it, for the audit trail (default: the OS user)."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Create a token and print it once: only its SHA-256 is stored, it cannot be shown again."""
    period = None
    if expires is not None:
        try:
            period = parse_period(expires)
        except DurationError as exc:
            fail(f"--expires {expires!r}: {exc}", 2)
    with open_service(home) as service:
        try:
            row, secret = service.token_create(name, role, expires=period, by=_who(by))
        except ConfigError as exc:
            fail(str(exc), 2)
        http = service.settings.http
    scheme = "https" if http.tls_cert else "http"
    sys.stdout.write(secret + "\n")
    sys.stdout.flush()
    until = f", expires {_when(row.expires_at)}" if row.expires_at else ", valid until revoked"
    err_console.print(
        f"token {row.id} {row.name!r}, role {row.role}{until}. It is shown only this once: keep it in a secret store.\n"
        f"Send it as a bearer token, e.g.\n"
        f"  curl -H 'Authorization: Bearer <token>' {scheme}://{http.host}:{http.port}/dicomweb/studies\n"
        f"Revoke it with: ilm tokens revoke {row.id}",
        highlight=False, soft_wrap=True,
    )


@tokens_app.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", help="Also revoked tokens."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Tokens (never the tokens themselves): ID, name, role, created, expires, last used."""
    with open_service(home) as service:
        rows = service.tokens(include_revoked=all_)
    if as_json:
        print_json(rows)
        return
    table = Table("ID", "Name", "Role", "Created", "By", "Expires", "Last used", "Revoked")
    for r in rows:
        table.add_row(str(r.id), r.name, r.role, _when(r.created_at), r.created_by, _when(r.expires_at),
                      _when(r.last_used_at), _when(r.revoked_at))
    console.print(table)


@tokens_app.command("revoke")
def revoke(
    ref: str = typer.Argument(..., help="The token's ID, or its name (revokes every active token of that name)."),
    by: Optional[str] = typer.Option(None, "--by", help="Who revokes it, for the audit trail (default: the OS user)."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Revoke a token: requests that present it get 401 from now on."""
    with open_service(home) as service:
        try:
            rows = service.token_revoke(ref, by=_who(by))
        except NotFound as exc:
            fail(str(exc), 2)
    for r in rows:
        console.print(f"revoked token {r.id} {r.name!r} ({r.role})", highlight=False)
