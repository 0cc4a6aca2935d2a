"""Commands for archive tiers: recall (restore) studies, list restores."""

from __future__ import annotations

import getpass
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from ilm.cli.app import HomeOption, app, console, err_console, fail, open_service, print_json
from ilm.errors import ConfigError, IlmError, NotFound
from ilm.service import ArchiveService

POLL_SECONDS = 0.5  # how often --wait looks at the restores (and runs the restore worker step)


def _who(by: Optional[str]) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _when(t: Optional[datetime]) -> str:
    return f"{t.astimezone():%Y-%m-%d %H:%M:%S}" if t else ""


def _table(statuses: Sequence[Any]) -> Table:
    table = Table(Column("Study Instance UID", overflow="fold"), "State", "From", "To", "Requested", "Ready in / at",
                  "Expires", "Detail")
    for s in statuses:
        if s.state in ("requested", "restoring") and s.retry_after is not None:
            ready = f"{s.retry_after:.0f} s"
        else:
            ready = _when(s.completed_at or s.ready_at)
        table.add_row(s.study_uid, s.state, s.archive_tier or "", s.target_tier or "", _when(s.requested_at),
                      ready, _when(s.expires_at), s.detail)
    return table


def _wait(service: ArchiveService, statuses: list[Any], timeout: Optional[float], show: bool) -> tuple[list[Any], bool]:
    """Run the restore worker step and show progress until every restore is
    ready or failed (or ``timeout`` seconds passed). Returns (statuses, timed out)."""
    order = [s.study_uid for s in statuses]
    latest = {s.study_uid: s for s in statuses}
    deadline = None if timeout is None else time.monotonic() + timeout
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"),
                  TimeRemainingColumn(), console=err_console, transient=True, disable=not show) as bar:
        tasks = {}
        for s in statuses:
            span = (s.ready_at - s.requested_at).total_seconds() if s.ready_at and s.requested_at else 0.0
            tasks[s.study_uid] = bar.add_task(s.study_uid, total=max(span, 0.001), state=s.state)
            bar.update(tasks[s.study_uid], completed=max(span - (s.retry_after or 0.0), 0.0))
        while True:
            pending = [u for u in order if not latest[u].done]
            if not pending:
                return [latest[u] for u in order], False
            if deadline is not None and time.monotonic() >= deadline:
                return [latest[u] for u in order], True
            try:
                service.process_restores()  # there may be no ilm serve running the worker
            except IlmError as exc:
                err_console.print(f"[yellow]warning:[/] {exc}", highlight=False)
            for s in service.restores(active_only=False, study_uids=pending):
                latest[s.study_uid] = s
                task = tasks[s.study_uid]
                total = bar.tasks[task].total or 0.001
                done = total if s.done else max(total - (s.retry_after or 0.0), 0.0)
                bar.update(task, completed=min(done, total), state=s.state)
            if all(latest[u].done for u in pending):
                continue
            time.sleep(POLL_SECONDS)


@app.command()
def recall(
    study_uids: list[str] = typer.Argument(..., help="Study Instance UIDs to restore from their archive tier."),
    home: Optional[Path] = HomeOption,
    by: Optional[str] = typer.Option(None, "--by", help="Who asks, for the audit trail (default: the login name)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the restores are done, showing their progress."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="With --wait: give up waiting after this many seconds (the restores go on)."),
    json_out: bool = typer.Option(False, "--json", help="Print the statuses as JSON."),
) -> None:
    """Restore studies from an archive tier so they can be read (like an S3 Glacier restore).

    The restore completes after the tier's retrieval_latency_seconds; the
    restored copy is kept restored_copy_days, then dropped (the archive copy
    stays). Recalling a study being restored joins that restore; recalling a
    restored study keeps its copy longer. Exit 1 if a restore failed or --wait
    timed out.
    """
    with open_service(home) as service:
        try:
            statuses = service.recall(study_uids, _who(by))
        except NotFound as exc:
            fail(str(exc), 1)
        except ConfigError as exc:
            fail(str(exc), 2)
        except IlmError as exc:
            fail(f"restore not started: {exc}", 1)
        timed_out = False
        if wait:
            statuses, timed_out = _wait(service, statuses, timeout, show=not json_out)
    if json_out:
        print_json(statuses)
    else:
        console.print(_table(statuses))
        if not wait and any(s.state in ("requested", "restoring") for s in statuses):
            console.print("restores run in 'ilm serve' (or use --wait); see 'ilm restores'", highlight=False)
    if timed_out:
        err_console.print("timed out waiting; the restores go on (see 'ilm restores')", highlight=False)
    if timed_out or any(s.state in ("failed", "expired") for s in statuses):
        raise typer.Exit(1)


@app.command()
def restores(
    home: Optional[Path] = HomeOption,
    all_: bool = typer.Option(False, "--all", help="Include failed and expired restores."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """List restores from archive tiers, newest first (under way or ready, unless --all)."""
    with open_service(home) as service:
        rows = service.restores(active_only=not all_)
    if json_out:
        print_json(rows)
        return
    console.print(_table(rows))
    console.print(f"{len(rows)} restores", highlight=False)
