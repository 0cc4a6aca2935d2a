"""``ilm watermark``: check each tier's capacity watermarks and shed what is over."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ilm.cli.app import (
    HomeOption,
    app,
    console,
    err_console,
    fail,
    open_service,
    print_json,
)
from ilm.cli.archive import human_bytes
from ilm.cli.lifecycle import ByOption, _who
from ilm.cli.policy import _print_summary
from ilm.errors import IlmError
from ilm.policy import PolicyError


def _limit(text: str, n: int) -> str:
    return f"{text} ({human_bytes(n)})" if text.endswith("%") else human_bytes(n)


def _status_table(rows: list[Any]) -> Table:
    t = Table("Tier", "Measured", "Used", "Capacity", "High", "Low", "Reserve", "State")
    for st in rows:
        if st.error:
            t.add_row(st.tier, "", "", "", "", "", "", f"[red]{st.error}[/]")
            continue
        u, lim = st.usage, st.limits
        state = "[bold red]over high[/]" if st.triggered else ("over low" if u.used + lim.reserve > lim.low else "ok")
        t.add_row(st.tier, u.measured, human_bytes(u.used), human_bytes(u.capacity) if u.capacity else "",
                  _limit(lim.high_text, lim.high), _limit(lim.low_text, lim.low),
                  human_bytes(lim.reserve), state)
    return t


def _json(wp: Any, report: Any = None) -> dict[str, Any]:
    st = wp.status
    out: dict[str, Any] = {"tier": st.tier, "triggered": st.triggered, "error": st.error or None,
                           "next_tier": st.next_tier}
    if st.usage is not None and st.limits is not None:
        out.update(used=st.usage.used, capacity=st.usage.capacity, measured=st.usage.measured, high=st.limits.high,
                   low=st.limits.low, reserve=st.limits.reserve)
    if wp.plan is not None:
        out["plan_id"] = wp.plan.id
        out["summary"] = wp.plan.summary
        out["actions"] = [{k: a[k] for k in ("study_uid", "decision", "target_tier", "size_bytes", "reason")}
                          for a in wp.actions]
    if report is not None:
        out["report"] = report
    return out


@app.command()
def watermark(
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what a run would do; store and change nothing."),
    plan_only: bool = typer.Option(False, "--plan-only", help="Store the plans for approval (ilm apply PLAN); move nothing."),
    tier: str | None = typer.Option(None, "--tier", help="Only this tier (default: every tier with a high_watermark)."),
    policy: Path | None = typer.Option(None, "--policy",
                                          help="Policy whose keep rules pin studies (default: lifecycle.schedule_policy)."),
    home: Path | None = HomeOption,
    by: str | None = ByOption,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Capacity watermarks: every tier past its high watermark moves its least recently
    read studies down a tier (drops copies verified elsewhere) until it is under its low one."""
    who = _who(by)
    with open_service(home) as service:
        try:
            if dry_run or plan_only:
                results: list[tuple[Any, Any]] = [(wp, None) for wp in
                                                  service.watermark_plan(by=who, tier=tier, policy=policy, store=plan_only)]
            else:
                results = service.watermark_run(by=who, tier=tier, policy=policy)
        except PolicyError as exc:
            for i in exc.issues:
                err_console.print(str(i), highlight=False, soft_wrap=True)
            fail(f"{policy}: the policy has errors; nothing was planned", 2)
        except IlmError as exc:
            fail(str(exc), 2)
    if json_out:
        print_json([_json(wp, r) for wp, r in results])
    else:
        if not results:
            console.print("no tier has a high_watermark (see docs/tiers.md, Watermarks)")
            return
        print_results(results, stored=not dry_run)
    _exit_on_failure(results)


def print_results(results: list[tuple[Any, Any]], *, stored: bool, max_rows: int | None = None) -> None:
    """The status table, then per tier past its high watermark: its plan and the studies it sheds."""
    console.print(_status_table([wp.status for wp, _r in results]))
    for wp, report in results:
        if wp.plan is None:
            continue
        w = wp.plan.summary["watermark"]
        head = f"[bold]{wp.status.tier}[/]: free {human_bytes(w['to_free'])}; the plan frees {human_bytes(w['freed'])}"
        head += "" if w["ends_under_low"] else " [red](not enough: it stays over its low watermark)[/]"
        console.print(head, highlight=False)
        _print_summary(wp.plan.summary, wp.plan.id if stored else None)
        t = Table("Study Instance UID", "Decision", "To", "Size", "Reason")
        shown = wp.actions if max_rows is None else wp.actions[:max_rows]
        for a in shown:
            t.add_row(a["study_uid"], a["decision"], a["target_tier"] or "", human_bytes(a["size_bytes"]), a["reason"])
        console.print(t)
        if len(shown) < len(wp.actions):
            console.print(f"... and {len(wp.actions) - len(shown):,} more", highlight=False)
        if report is not None:
            console.print(f"plan {wp.plan.id}: {report.done} done, {len(report.skipped)} skipped, "
                          f"{len(report.failed)} failed; {human_bytes(report.bytes_moved)} moved", highlight=False)
            for uid, why in report.failed:
                err_console.print(f"  failed {uid}: {why}", highlight=False)
        elif stored:
            console.print(f"review: ilm plan show {wp.plan.id}    apply: ilm apply {wp.plan.id}", highlight=False)


def _exit_on_failure(results: list[tuple[Any, Any]]) -> None:
    if any(r is not None and r.failed for _wp, r in results):
        raise typer.Exit(1)


# How often ilm serve measures the tiers that have a high_watermark (ILM_WATERMARK_INTERVAL_SECONDS overrides).
WATERMARK_INTERVAL_SECONDS = 300.0


def start_watermark_checks(service: Any, stop: threading.Event, interval: float | None = None) -> threading.Thread | None:
    """ilm serve: run the watermarks now and every few minutes while a tier has a high_watermark.

    A tier under its high watermark costs one measurement; a tier past it is
    planned and applied at once (the plan is stored and audited like any run
    of ``ilm watermark``)."""
    if not any(t.high_watermark for t in service.settings.tiers.values()):
        return None
    every = interval if interval is not None else float(os.environ.get("ILM_WATERMARK_INTERVAL_SECONDS")
                                                         or WATERMARK_INTERVAL_SECONDS)
    log = logging.getLogger("ilm.watermark")

    def loop() -> None:
        while not stop.is_set():
            try:
                for wp, report in service.watermark_run(by="ilm-watermark"):
                    if wp.status.error:
                        log.error("%s", wp.status.error)
                    if wp.plan is None or report is None:
                        continue
                    w = wp.plan.summary["watermark"]
                    log.warning("tier %r past its high watermark: plan %s moved or dropped %d studies "
                                "(%d skipped, %d failed); %s under the low watermark", wp.status.tier, wp.plan.id,
                                report.done, len(report.skipped), len(report.failed),
                                "now" if w["ends_under_low"] else "NOT")
            except Exception as exc:  # a bad policy or a catalog hiccup must not stop the archive
                log.error("watermark check: %s", exc)
            stop.wait(every)

    t = threading.Thread(target=loop, name="ilm-watermark", daemon=True)
    t.start()
    console.print(f"watermarks: checking tiers every {every:g} s", highlight=False)
    return t
