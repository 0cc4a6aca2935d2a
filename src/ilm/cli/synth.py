"""Commands for synthetic archives: synth (files or catalog rows) and demo."""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ilm.cli.app import (
    HomeOption,
    app,
    console,
    err_console,
    fail,
    open_service,
    settings_from,
)
from ilm.cli.archive import human_bytes
from ilm.cli.demo_tiers import demo_access, demo_watermark
from ilm.config import CONFIG_NAME, default_home, write_default_config
from ilm.errors import ConfigError, IlmError
from ilm.models import IngestResult, IngestStatus
from ilm.service import ArchiveService, iter_files
from ilm.synth.plan import StudySpec, SynthConfig, generate, totals
from ilm.synth.rows import apply_access_history, load_catalog, replay_accesses

if TYPE_CHECKING:  # ilm.synth.files (pydicom, numpy) is imported by the commands that write files
    from ilm.synth.files import FilesReport

DEMO_STUDIES = 300


def _progress(what: str, quiet: bool = False) -> Progress:
    return Progress(
        TextColumn(f"{what:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console, transient=False, disable=quiet,
    )


def _reference(as_of: Optional[str]) -> date:
    if not as_of:
        return date.today()
    try:
        return date.fromisoformat(as_of)
    except ValueError:
        fail(f"--as-of: {as_of!r} is not a date (YYYY-MM-DD)", 2)


def _config(**kw: Any) -> SynthConfig:
    try:
        return SynthConfig(**kw)
    except ValueError as exc:
        fail(str(exc), 2)


@app.command()
def synth(
    out_dir: Optional[Path] = typer.Argument(None, help="Folder to write the DICOM files into (not with --catalog-only)."),
    studies: int = typer.Option(..., "--studies", min=0, help="Number of studies."),
    patients: Optional[int] = typer.Option(None, "--patients", min=1, help="Number of patients (default studies / 2.5)."),
    years: int = typer.Option(15, "--years", min=1, max=100, help="Years of history before --as-of."),
    growth: float = typer.Option(0.2, "--growth", help="Yearly growth of the study count (0.2 = 20 %)."),
    scale: Optional[float] = typer.Option(
        None, "--scale", help="Instance counts and image areas relative to real life "
        "(default 0.05 for files, 1 for --catalog-only)."),
    seed: int = typer.Option(1, "--seed", help="Same seed and options, same archive."),
    missing_rate: float = typer.Option(0.01, "--missing-rate", help="Share of studies with a missing or unparsable fact."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="The plan's today, YYYY-MM-DD (default today)."),
    catalog_only: bool = typer.Option(False, "--catalog-only", help="Write catalog rows into the archive of --home, no files."),
    with_instances: bool = typer.Option(False, "--with-instances", help="With --catalog-only: instance and location rows too."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="With --catalog-only: loader processes (default one per CPU)."),
    access_log: bool = typer.Option(False, "--access-log", help="With --catalog-only: also write every read of the "
                                    "access history into the access log (reads by study age, ilm stats)."),
    home: Optional[Path] = HomeOption,
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Generate a realistic synthetic archive: DICOM files in OUT_DIR, or catalog rows (--catalog-only)."""
    if catalog_only and out_dir is not None:
        fail("OUT_DIR and --catalog-only exclude each other: --catalog-only writes into the catalog of --home", 2)
    if not catalog_only and out_dir is None:
        fail("give OUT_DIR, or --catalog-only to write catalog rows", 2)
    if with_instances and not catalog_only:
        fail("--with-instances only applies to --catalog-only", 2)
    if access_log and not catalog_only:
        fail("--access-log only applies to --catalog-only", 2)
    cfg = _config(
        reference=_reference(as_of), studies=studies, patients=patients, years=years, growth=growth,
        scale=scale if scale is not None else (1.0 if catalog_only else 0.05), seed=seed, missing_rate=missing_rate,
    )
    started = time.perf_counter()
    if catalog_only:
        with open_service(home) as service:
            tier = service.settings.ingest_tier
            with _progress("cataloguing", json_out) as bar:
                task = bar.add_task("rows", total=cfg.studies)
                report = load_catalog(
                    service.catalog, cfg, with_instances=with_instances, tier=tier, workers=workers,
                    progress=lambda c: bar.advance(task, c.studies + c.skipped_studies),
                )
            reads = replay_accesses(service.catalog, generate(cfg)) if access_log else 0
        elapsed = time.perf_counter() - started
        result = {
            "mode": "catalog", "studies": report.studies, "skipped_studies": report.skipped_studies,
            "patients": report.patients, "series": report.series, "instances": report.instances,
            "locations": report.locations, "size_bytes": report.size_bytes, "seconds": round(elapsed, 2),
            "studies_per_second": round(report.studies / elapsed) if elapsed > 0 else None,
            "workers": report.workers, "access_log_rows": reads,
        }
        if json_out:
            print(json.dumps(result, indent=2))
            return
        console.print(
            f"catalogued {report.studies:,} studies ({report.patients:,} new patients, {report.series:,} series, "
            f"{report.instances:,} instances, {human_bytes(report.size_bytes)}) in {elapsed:.1f} s "
            f"({result['studies_per_second'] or 0:,} studies/s, {report.workers or 1} loader process(es))"
            + (f"; {report.skipped_studies:,} were already there" if report.skipped_studies else "")
        )
        if not with_instances:
            console.print(f"  no instance or location rows (use --with-instances for those); studies are recorded as held on tier {tier!r}")
        return
    assert out_dir is not None
    from ilm.synth.files import write_files

    by_modality: dict[str, int] = {}
    with _progress("writing", json_out) as bar:
        task = bar.add_task("files", total=cfg.studies)

        def tick(spec: StudySpec, r: FilesReport) -> None:
            for m in spec.modalities:
                by_modality[m] = by_modality.get(m, 0) + 1
            bar.advance(task)

        written = write_files(generate(cfg), out_dir, seed=cfg.seed, progress=tick)
    elapsed = time.perf_counter() - started
    if json_out:
        print(json.dumps({"mode": "files", "folder": str(out_dir), "studies": written.studies,
                          "series": written.series, "files": written.files, "bytes": written.bytes,
                          "studies_by_modality": by_modality, "seconds": round(elapsed, 2)}, indent=2))
        return
    console.print(
        f"wrote {written.studies:,} studies, {written.series:,} series, {written.files:,} files "
        f"({human_bytes(written.bytes)}) to {out_dir} in {elapsed:.1f} s", highlight=False
    )
    console.print("  studies by modality: " + ", ".join(f"{m} {n}" for m, n in sorted(by_modality.items())))


def _summary_table(title: str, first: str, rows: list[Any]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(first)
    for name in ("Studies", "Series", "Instances", "Size"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(r.key, f"{r.studies:,}", f"{r.series:,}", f"{r.instances:,}", human_bytes(r.size_bytes))
    return table


def print_summary(service: ArchiveService) -> dict[str, Any]:
    """Print the archive's summary tables (by modality, study year, tier); return them."""
    summary = service.summary()
    console.print(_summary_table("By modality", "Modality", summary["modality"]))
    console.print(_summary_table("By study year", "Year", summary["year"]))
    console.print(_summary_table("By tier", "Tier", summary["tier"]))
    return summary


@app.command()
def demo(
    home: Optional[Path] = HomeOption,
    studies: int = typer.Option(DEMO_STUDIES, "--studies", min=1, max=100_000, help="Number of studies to generate."),
    seed: int = typer.Option(1, "--seed", help="Same seed, same archive."),
    scale: float = typer.Option(0.05, "--scale", help="Instance counts and image areas relative to real life."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="The archive's today, YYYY-MM-DD (default today)."),
) -> None:
    """Build a realistic synthetic archive, ingest it like real data, and summarise it.

    Writes the default config into the home folder if it has none, generates
    DICOM files under HOME/synth (once: a second run reuses them and finds
    every instance already stored), imports them through the same path as
    'ilm import', replays the plan's access history onto the catalog, and
    prints studies, series, instances and bytes by modality, study year and tier.
    """
    started = time.perf_counter()
    home = (home or default_home()).absolute()
    if not (home / CONFIG_NAME).exists():
        try:
            path = write_default_config(home)
        except (ConfigError, OSError) as exc:
            fail(str(exc), 2)
        console.print(f"wrote the default config {path}", highlight=False)
    settings = settings_from(home)
    cfg = _config(reference=_reference(as_of), studies=studies, seed=seed, scale=scale)
    folder = home / "synth" / f"seed{cfg.seed}-studies{cfg.studies}-scale{cfg.scale:g}-{cfg.reference.isoformat()}"
    marker = folder.with_name(folder.name + ".json")
    from ilm.synth.files import write_archive

    with _progress("generating") as bar:
        task = bar.add_task("generate", total=cfg.studies)
        files = write_archive(cfg, folder, marker=marker, progress=lambda s, r: bar.advance(task))
        if files.skipped:
            bar.update(task, completed=cfg.studies, description="reused")
    what = "reused" if files.skipped else "generated"
    console.print(f"{what} {files.studies:,} studies, {files.files:,} DICOM files ({human_bytes(files.bytes)}) in {folder}",
                  highlight=False)

    try:
        service = ArchiveService.open(settings)
    except IlmError as exc:
        fail(str(exc), 2)
    try:
        paths = list(iter_files([folder]))
        with _progress("importing") as bar:
            task = bar.add_task("import", total=len(paths))

            def tick(r: IngestResult) -> None:
                bar.advance(task)

            report = service.import_paths(paths, progress=tick)
        console.print(
            f"import: stored {report.stored:,} ({human_bytes(report.bytes_stored)}), duplicates {report.duplicates:,}, "
            f"conflicts {report.conflicts:,}, rejected {report.rejected:,}"
        )
        for r in report.problems[:20]:
            tag = "conflict" if r.status is IngestStatus.CONFLICT else "rejected"
            console.print(f"  {tag}: {r.source}: {r.reason}", highlight=False, soft_wrap=True)
        plan_totals = totals(generate(cfg))
        touched = apply_access_history(service.catalog, generate(cfg))
        console.print(f"access history: last access of {touched:,} studies set from the plan's reads")
        print_summary(service)
        _demo_lifecycle(service, home, cfg.reference)
        demo_access(service, home)
    finally:
        service.close()
    demo_watermark(settings, settings.ingest_tier)
    console.rule("tiers at the end")
    service = ArchiveService.open(settings)
    try:
        console.print(_summary_table("By tier", "Tier", service.summary()["tier"]))
        _demo_cost(service, home, cfg.reference)
    finally:
        service.close()
    console.print(
        f"[bold]demo archive[/] in {home}: {plan_totals.studies:,} studies of {plan_totals.patients:,} patients, "
        f"{cfg.years} years, {time.perf_counter() - started:.0f} s. Try: ilm studies --home {home}",
        highlight=False,
    )
    if report.rejected or report.conflicts:
        raise typer.Exit(1)


def _demo_lifecycle(service: ArchiveService, home: Path, today: date) -> None:
    """Plan the bundled demo policy, show the preview, apply it, show the tiers after."""
    from importlib.resources import files as package_files

    from ilm.cli.policy import _print_summary

    policy = home / "demo-policy.yaml"
    if not policy.exists():
        text = package_files("ilm").joinpath("data/demo-policy.yaml").read_text(encoding="utf-8")
        if "archive" not in service.settings.tiers:  # a config written before the default had an archive tier
            head, rest = text.split("  - id: old-unread-to-archive", 1)
            text = head + rest[rest.index("  - id: "):]
            console.print("this config has no 'archive' tier: the demo policy leaves out its archive rule")
        policy.write_text(text, encoding="utf-8")
    console.rule("lifecycle: plan")
    console.print(f"policy {policy}", highlight=False)
    # A legal hold on one study the policy would expire, to show a safety net at work.
    preview = service.plan(policy, as_of=today, by="ilm-demo", store=False)
    expiring = [d.study_uid for d in preview.decisions if d.action.value == "expire"]
    if expiring and not any(h.target == expiring[0] for h in service.holds()):
        hold = service.hold_add("study", expiring[0], "demo: records requested by counsel", "ilm-demo")
        console.print(f"legal hold {hold} placed on {expiring[0]} (ilm hold list)", highlight=False)
    result = service.plan(policy, as_of=today, by="ilm-demo")
    _print_summary(result.plan.summary, result.plan.id)
    pending = sum(1 for a in service.plan_actions(result.plan.id) if a.state == "pending")
    console.rule("lifecycle: apply")
    with _progress("applying") as bar:
        task = bar.add_task("apply", total=pending)
        report = service.apply(result.plan.id, approved_by="ilm-demo", progress=lambda a, st: bar.advance(task))
    console.print(f"applied {result.plan.id}: {report.done} done, {len(report.skipped)} skipped, "
                  f"{len(report.failed)} failed; {human_bytes(report.bytes_moved)} moved to cheaper storage; "
                  f"expired studies wait {service.settings.lifecycle.quarantine_days} days in quarantine "
                  "(ilm restore UID brings one back)", highlight=False)
    console.rule("after")
    print_summary(service)
    breaks = service.audit_verify()
    console.print(f"audit trail: {service.audit_count()} entries, {'intact' if not breaks else 'BROKEN'} "
                  f"(ilm audit --home {home})", highlight=False)


def _demo_cost(service: ArchiveService, home: Path, today: date) -> None:
    """The cost comparison in a few lines, and the HTML report (docs/cost.md)."""
    from ilm.cli.cost import print_cost
    from ilm.report.html import render_html

    policy = home / "demo-policy.yaml"
    console.rule("cost")
    try:
        data = service.report([policy], today=today)
    except IlmError as exc:
        console.print(f"no cost report: {exc}", highlight=False)
        return
    print_cost(data["cost"], brief=True)
    path = home / "report.html"
    path.write_text(render_html(data), encoding="utf-8")
    console.print(f"HTML report: {path} (ilm report --html FILE --policy FILE)", highlight=False)
