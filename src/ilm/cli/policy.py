"""Commands for policies: policy check, plan, plan show/list/export, explain, apply."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ilm.cli.app import HomeOption, app, console, err_console, fail, open_service, print_json, settings_from
from ilm.cli.archive import human_bytes
from ilm.cli.lifecycle import ByOption, _who
from ilm.errors import IlmError, NotFound
from ilm.lifecycle.plan_compare import compare_decisions, peer_decisions
from ilm.policy import PolicyError, check_policy

policy_app = typer.Typer(help="Lifecycle policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
plan_app = typer.Typer(help="Preview what a policy would do, and review stored plans.", invoke_without_command=True)
app.add_typer(plan_app, name="plan")


@policy_app.command("check")
def policy_check(file: Path, home: Optional[Path] = HomeOption) -> None:
    """Validate a policy file: every error with file, line and field. Exit 2 on any error."""
    settings = settings_from(home)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{file}: cannot read: {exc}", 2)
    policy, issues = check_policy(text, known_tiers=settings.lifecycle_tiers, source=str(file))
    errors = [i for i in issues if getattr(i, "kind", "") != "warning"]
    for i in issues:
        err_console.print(str(i), highlight=False, soft_wrap=True)
    if policy is None or errors and policy is None:
        fail(f"{file}: {len(issues)} problem(s); the policy is refused", 2)
    assert policy is not None
    for w in policy.warnings:
        err_console.print(f"warning: {w}", highlight=False, soft_wrap=True)
    console.print(f"{file}: OK, {len(policy.rules)} rules; policy '{policy.name}'")


def _as_of(value: Optional[str]) -> date:
    if not value:
        return date.today()
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"--as-of: {value!r} is not a date (YYYY-MM-DD)", 2)


def _print_summary(summary: dict[str, Any], plan_id: str | None) -> None:
    head = f"plan {plan_id}" if plan_id else "preview (not stored)"
    console.print(f"[bold]{head}[/]: {summary['studies']} studies evaluated", highlight=False)
    t = Table("Action", "Rule", "Tier", "Studies", "Instances", "Bytes")
    for a in summary["actions"]:
        t.add_row(a["action"], a["rule"], a["tier"] or "", str(a["studies"]), str(a["instances"]), human_bytes(a["bytes"]))
    console.print(t)
    if summary["vetoes"]:
        v = Table("Protection", "Studies vetoed")
        for k, n in summary["vetoes"].items():
            v.add_row(k, str(n))
        console.print(v)
    if summary.get("unknown_facts"):
        console.print("kept for missing facts: " + ", ".join(f"{k} ({n})" for k, n in summary["unknown_facts"].items()))
    before, after = summary["monthly_cost_before"], summary["monthly_cost_after"]
    digits = 2 if max(before, after) >= 10 else 4
    console.print(f"monthly storage cost: ${before:,.{digits}f} before, ${after:,.{digits}f} after"
                  + (f" (saves {1 - after / before:.0%})" if before > 0 else ""), highlight=False)


@plan_app.callback()
def plan(
    ctx: typer.Context,
    policy: Optional[Path] = typer.Option(None, "--policy", help="The policy file to evaluate."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Evaluate as of this day (YYYY-MM-DD); default today."),
    json_out: bool = typer.Option(False, "--json"),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="Also write every decision to this CSV file."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A plan exported from a peer archive: show where decisions differ."),
    home: Optional[Path] = HomeOption,
    by: Optional[str] = ByOption,
) -> None:
    """Evaluate a policy over every study and store the plan (ilm plan --policy FILE)."""
    if ctx.invoked_subcommand is not None:
        return
    if policy is None:
        fail("give --policy FILE (or a subcommand: show, list, export)", 2)
    day = _as_of(as_of)
    with open_service(home) as service:
        try:
            with Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), console=err_console,
                          transient=True, disable=json_out) as bar:
                task = bar.add_task("plan", total=None)
                result = service.plan(policy, as_of=day, by=_who(by), progress=lambda n: bar.advance(task, n))
        except PolicyError as exc:
            for i in exc.issues:
                err_console.print(str(i), highlight=False, soft_wrap=True)
            fail(f"{policy}: the policy has errors; nothing was planned", 2)
        except IlmError as exc:
            fail(str(exc), 2)
        p = result.plan
        if csv_file:
            with open(csv_file, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["study_uid", "action", "rule", "tier", "vetoes", "reason"])
                for d in result.decisions:
                    w.writerow([d.study_uid, d.action.value, d.rule_id or "", d.tier or "",
                                ";".join(v.protection for v in d.vetoes), d.reason])
        diff = _compare(result.decisions, compare) if compare else None
    if json_out:
        out: dict[str, Any] = {"plan_id": p.id, "plan_sha256": p.plan_sha256, "policy_sha256": p.policy_sha256,
                               "catalog_sha256": p.catalog_sha256, "as_of": p.as_of.isoformat(), **p.summary}
        if diff is not None:
            out["differences"] = diff
        print_json(out)
        return
    _print_summary(p.summary, p.id)
    if diff is not None:
        _print_diff(diff)
    console.print(f"review: ilm plan show {p.id}    apply: ilm apply {p.id}", highlight=False)


def _compare(decisions: Sequence[Any], other: Path) -> list[dict[str, Any]]:
    try:
        theirs = peer_decisions(json.loads(other.read_text()))
    except (OSError, ValueError) as exc:
        fail(f"{other}: not a plan exported by 'ilm plan export': {exc}", 2)
    mine = {d.study_uid: (d.action.value, d.tier, d.rule_id) for d in decisions}
    # every active study is decided here: one the peer has and we do not is absent, not kept
    mine.update({uid: ("absent", None, None) for uid in theirs if uid not in mine})
    return compare_decisions(mine, theirs)


def _print_diff(diff: list[dict[str, Any]]) -> None:
    if not diff:
        console.print("the peer plan decides the same for every study")
        return
    t = Table("Study Instance UID", "Here", "Peer")
    for d in diff:
        t.add_row(d["study_uid"], f"{d['here']} {d['here_tier'] or ''} ({d['here_rule'] or '-'})",
                  f"{d['peer']} {d['peer_tier'] or ''} ({d['peer_rule'] or '-'})")
    console.print(t)
    console.print(f"{len(diff)} studies decided differently")


@plan_app.command("show")
def plan_show(plan_id: str, home: Optional[Path] = HomeOption, json_out: bool = typer.Option(False, "--json")) -> None:
    """Each study of a plan with its decision and the rule or protection that decided it."""
    with open_service(home) as service:
        p = service.plan_get(plan_id)
        if p is None:
            fail(f"no plan {plan_id!r}", 1)
        actions = service.plan_actions(plan_id)
    if json_out:
        print_json({"plan": p, "actions": actions})
        return
    _print_summary(p.summary, p.id)
    console.print(f"state {p.state}; policy {p.policy_path} (sha256 {p.policy_sha256[:12]}); as of {p.as_of}; "
                  f"by {p.created_by}; approved by {p.approved_by or '-'}", highlight=False)
    t = Table("Study Instance UID", "Decision", "Tier", "Rule", "Vetoed by", "State", "Reason")
    for a in actions:
        t.add_row(a.study_uid, a.decision, a.target_tier or "", a.rule_id or "",
                  ", ".join(v["protection"] for v in a.vetoes), a.state, a.reason)
    console.print(t)


@plan_app.command("list")
def plan_list(home: Optional[Path] = HomeOption, json_out: bool = typer.Option(False, "--json")) -> None:
    """Stored plans, newest first."""
    with open_service(home) as service:
        rows = service.plans()
    if json_out:
        print_json(rows)
        return
    t = Table("Plan", "Created", "By", "Policy", "As of", "State", "Approved by")
    for p in rows:
        t.add_row(p.id, f"{p.created_at:%Y-%m-%d %H:%M}", p.created_by, p.policy_name, str(p.as_of), p.state,
                  p.approved_by or "")
    console.print(t)


@plan_app.command("export")
def plan_export(plan_id: str, file: Path, home: Optional[Path] = HomeOption) -> None:
    """Write a plan to a JSON file, to compare on a peer archive (ilm plan --compare FILE)."""
    with open_service(home) as service:
        try:
            body = service.plan_export(plan_id)
        except NotFound as exc:
            fail(str(exc), 1)
    file.write_text(json.dumps(body, indent=1, default=str))
    console.print(f"wrote {file} ({len(body['decisions'])} decisions)")


@app.command()
def explain(
    study_uid: str,
    policy: Path = typer.Option(..., "--policy"),
    as_of: Optional[str] = typer.Option(None, "--as-of"),
    home: Optional[Path] = HomeOption,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Show every rule's match or miss and every protection for one study."""
    with open_service(home) as service:
        try:
            d = service.explain(study_uid, policy, as_of=_as_of(as_of))
        except PolicyError as exc:
            for i in exc.issues:
                err_console.print(str(i), highlight=False)
            fail(f"{policy}: the policy has errors", 2)
    if d is None:
        fail(f"no active study {study_uid!r}", 1)
    if json_out:
        print_json(d)
        return
    console.print(f"[bold]{d.study_uid}[/]: {d.action.value} ({d.reason})", highlight=False)
    t = Table("Rule", "Outcome", "Checks")
    for r in d.trace:
        mark = " (decides)" if r.deciding else ("" if r.reached else " (not reached)")
        t.add_row(r.rule_id + mark, r.outcome.value,
                  "\n".join(f"{c.field}: {c.outcome.value} {c.reason}" for c in r.checks))
    console.print(t)
    p = Table("Protection", "Status", "Why")
    for c in d.protections:
        p.add_row(c.protection, c.status.value, c.reason)
    console.print(p)


@app.command("apply")
def apply_cmd(
    plan_id: str,
    approved_by: Optional[str] = typer.Option(None, "--approved-by", help="Who approved the plan (default: login name)."),
    resume: bool = typer.Option(False, "--resume", help="Finish a plan an interruption stopped (also recovers moves)."),
    home: Optional[Path] = HomeOption,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Execute exactly the actions of a stored plan, each re-checked first."""
    with open_service(home) as service:
        p = service.plan_get(plan_id)
        if p is None:
            fail(f"no plan {plan_id!r}", 1)
        if p.state == "applied":
            console.print(f"plan {plan_id} is already applied")
            return
        if p.state == "applying" and not resume:
            fail(f"plan {plan_id} was interrupted; run 'ilm apply {plan_id} --resume'", 2)
        total = sum(1 for a in service.plan_actions(plan_id) if a.state in ("pending", "failed"))
        try:
            with Progress(TextColumn("applying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          console=err_console, transient=True, disable=json_out) as bar:
                task = bar.add_task("apply", total=total)
                report = service.apply(plan_id, approved_by=_who(approved_by),
                                       progress=lambda a, s: bar.advance(task))
        except IlmError as exc:
            fail(str(exc), 2)
    if json_out:
        print_json(report)
    else:
        console.print(f"plan {plan_id}: {report.done} done, {len(report.skipped)} skipped, {len(report.failed)} failed; "
                      f"{human_bytes(report.bytes_moved)} moved", highlight=False)
        if report.recovered:
            console.print(f"recovered {report.recovered} interrupted moves first")
        for uid, why in report.skipped:
            console.print(f"  skipped {uid}: {why}", highlight=False)
        for uid, why in report.failed:
            err_console.print(f"  failed {uid}: {why}", highlight=False)
        if report.stopped:
            console.print(report.stopped)
    if report.failed:
        raise typer.Exit(1)
