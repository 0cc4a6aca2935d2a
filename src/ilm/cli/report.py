"""ilm report --html FILE / --pdf FILE: cost, projections, plans and analytics in one self-contained file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ilm.analytics import CostOptions
from ilm.cli.app import HomeOption, app, console, err_console, fail, open_service
from ilm.cli.cost import GrowthGbOption, GrowthPercentOption, PolicyOption, SampleOption, YearsOption
from ilm.cli.policy import _as_of
from ilm.errors import IlmError
from ilm.policy import PolicyError

__all__ = ["report"]


@app.command()
def report(
    html: Optional[Path] = typer.Option(None, "--html", help="The HTML file to write."),
    pdf: Optional[Path] = typer.Option(None, "--pdf", help="The PDF file to write (the same content, A4 pages)."),
    policy: Optional[list[Path]] = PolicyOption,
    years: int = YearsOption,
    growth_gb: Optional[float] = GrowthGbOption,
    growth_percent: Optional[float] = GrowthPercentOption,
    sample: int = SampleOption,
    as_of: Optional[str] = typer.Option(None, "--as-of", help="As of this day (YYYY-MM-DD)."),
    home: Optional[Path] = HomeOption,
) -> None:
    """Write one HTML file (no network needed to view it) and/or a PDF: storage by tier over time, cost
    projection per policy, reads by study age, what each policy's plan moves and deletes, the protections
    that vetoed."""
    day = _as_of(as_of)
    policies = list(policy or [])
    if html is None and pdf is None:
        fail("give --html FILE, --pdf FILE or both", 2)
    for p in policies:
        if not p.is_file():
            fail(f"--policy {p}: no such file", 2)
    for flag, out in (("--html", html), ("--pdf", pdf)):
        if out is not None and (out.is_dir() or not out.parent.is_dir()):
            fail(f"{flag} {out}: not a file in an existing folder", 2)
    opts = CostOptions(years=years, growth_gb_per_month=growth_gb, growth_percent=growth_percent, sample=sample)
    with open_service(home) as service:
        try:
            data = service.report(policies, today=day, options=opts)
        except PolicyError as exc:
            for i in exc.issues:
                err_console.print(str(i), highlight=False, soft_wrap=True)
            fail("a policy has errors; no report was written", 2)
        except IlmError as exc:
            fail(str(exc), 2)
    if html is not None:
        from ilm.report.html import render_html  # matplotlib: imported when a report is written, not by every command

        text = render_html(data)
        tmp = html.with_name(html.name + ".tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(html)
        except OSError as exc:
            fail(f"--html {html}: cannot write: {exc.strerror}", 1)
        console.print(f"wrote {html} ({len(text.encode()) / 1e6:.1f} MB)", highlight=False)
    if pdf is not None:
        from ilm.report.pdf import write_pdf

        tmp = pdf.with_name(pdf.name + ".tmp")
        try:
            pages = write_pdf(data, tmp)
            tmp.replace(pdf)
        except OSError as exc:
            fail(f"--pdf {pdf}: cannot write: {exc.strerror}", 1)
        console.print(f"wrote {pdf} ({pages} pages, {pdf.stat().st_size / 1e6:.1f} MB)", highlight=False)
