"""Every CLI command has its REST route, or is listed here with the reason it has none.

The commands are read from the Typer app as ``ilm`` builds it (every module of
ilm/cli is imported), so a new command fails this test until it gets a route
(in ROUTES) or a reason (in NO_ROUTE). Each route named must exist in the app
``ilm serve`` runs.
"""

from __future__ import annotations

from typing import Any

import pytest
from typer.main import get_command

from conftest import write_config

from ilm.cli import app as cli_app
from ilm.config import load_settings
from ilm.service import ArchiveService
from ilm.web import create_app
from ilm.web.auth import route_roles

ROUTES: dict[str, list[str]] = {
    "studies": ["GET /api/studies"],
    "show": ["GET /api/studies/{study_uid}"],
    "policy check": ["POST /api/policies/check"],
    "plan": ["POST /api/plans"],
    "plan list": ["GET /api/plans"],
    "plan show": ["GET /api/plans/{plan_id}", "GET /api/plans/{plan_id}/actions"],
    "plan export": ["GET /api/plans/{plan_id}/export"],  # and 'ilm plan --compare': POST .../compare
    "explain": ["POST /api/explain"],
    "apply": ["POST /api/plans/{plan_id}/apply", "GET /api/plans/{plan_id}/progress"],
    "hold add": ["POST /api/holds"],
    "hold list": ["GET /api/holds"],
    "hold remove": ["DELETE /api/holds/{hold_id}"],
    "hold sync": ["POST /api/holds/sync"],
    "label add": ["PUT /api/studies/{study_uid}/labels/{name}"],
    "label remove": ["DELETE /api/studies/{study_uid}/labels/{name}"],
    "restore": ["POST /api/quarantine/{study_uid}/restore", "GET /api/quarantine"],
    "purge": ["POST /api/purge", "GET /api/purge"],
    "audit": ["GET /api/audit", "GET /api/audit/verify"],
    "recall": ["POST /api/restores"],
    "restores": ["GET /api/restores"],
    "watermark": ["GET /api/watermarks", "GET /api/watermarks/preview", "POST /api/watermarks/run"],
    "tiering show": ["GET /api/tiering"],
    "tiering run": ["GET /api/tiering/preview", "POST /api/tiering/plans"],  # then POST /api/plans/{id}/apply
    "tokens create": ["POST /api/tokens"],
    "tokens list": ["GET /api/tokens"],
    "tokens revoke": ["DELETE /api/tokens/{ref}"],
    "keys list": ["GET /api/keys"],
    "stats": ["GET /api/stats"],
    "cost": ["GET /api/cost"],
    "verify": ["POST /api/verify", "GET /api/fixity"],
    "worm status": ["GET /api/worm"],
    "export": ["GET /api/studies/{study_uid}/export"],  # a ZIP of the study's files
}

NO_ROUTE: dict[str, str] = {
    "init": "writes ilm.toml into the home folder before any server exists",
    "serve": "is the server",
    "demo": "builds a demo archive on the local machine (a command-line walkthrough)",
    "synth": "writes a synthetic catalog for benchmarks on the local machine",
    "import": "reads local files; over HTTP instances arrive by STOW-RS (POST /dicomweb/studies)",
    "audit export": "writes DICOM audit message files into a local folder; the trail itself is GET /api/audit",
    "report": "writes a self-contained HTML file locally; its figures are GET /api/stats and GET /api/cost, "
              "and the dashboard at / shows them",
    "keys new": "creates master key files on the server's disk: key material must not travel over HTTP",
    "keys rotate": "re-wraps every object's data key, hours on a large archive: a console job (resumable)",
    "keys retire": "re-reads every object header and deletes key material: a console job",
}


def cli_commands() -> list[str]:
    """Every command of ``ilm``, as typed ('hold add'); groups that run on their own count as commands."""
    out: list[str] = []

    def walk(cmd: Any, prefix: str) -> None:
        subs = getattr(cmd, "commands", None)
        if subs is None:
            out.append(prefix)
            return
        if prefix and getattr(cmd, "invoke_without_command", False):
            out.append(prefix)  # 'ilm plan --policy', 'ilm audit'
        for name, sub in subs.items():
            walk(sub, f"{prefix} {name}".strip())

    walk(get_command(cli_app), "")
    return sorted(out)


def test_every_cli_command_has_a_route_or_a_reason() -> None:
    commands = set(cli_commands())
    assert {"studies", "plan", "plan show", "hold add", "audit"} <= commands  # the walk finds groups and callbacks
    missing = sorted(commands - set(ROUTES) - set(NO_ROUTE))
    assert missing == [], f"CLI commands without a REST route: add one (ilm/web/api_*.py) or a reason here: {missing}"
    gone = sorted((set(ROUTES) | set(NO_ROUTE)) - commands)
    assert gone == [], f"listed here but no longer CLI commands: {gone}"
    assert not set(ROUTES) & set(NO_ROUTE)


def test_a_new_command_without_a_route_is_caught() -> None:
    @cli_app.command("frobnicate")
    def frobnicate() -> None:
        """A command someone adds later."""

    try:
        assert "frobnicate" in set(cli_commands()) - set(ROUTES) - set(NO_ROUTE)
    finally:
        cli_app.registered_commands.pop()
    assert "frobnicate" not in cli_commands()


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_every_route_named_exists(home: Any, catalog_url: str) -> None:
    write_config(home, catalog_url)
    service = ArchiveService.open(load_settings(home=home, env={}))
    try:
        served = {f"{m} {r.path}" for r in route_roles(create_app(service)) for m in r.methods}
    finally:
        service.close()
    named = {route for routes in ROUTES.values() for route in routes}
    assert sorted(named - served) == []
    assert "POST /api/plans/{plan_id}/compare" in served  # 'ilm plan --compare'
