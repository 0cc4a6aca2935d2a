"""ilm report --html on a synthetic archive, on SQLite and PostgreSQL: one self-contained file
that parses, one SVG per chart with its series labels, and the numbers of ilm cost --json."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from datetime import timedelta

from typer.testing import CliRunner

from cost_archive import CT_TO_WARM, TODAY, archive  # noqa: F401 (the fixture)
from ilm.cli import app
from ilm.cost.shaping import money_text
from ilm.synth.plan import StudySpec

runner = CliRunner()
# Expires what is over a year old: the default protections veto much of it (5-year minimum, ...).
EXPIRE_OLD = """
name: expire-old
rules:
  - id: older-than-a-year
    when: {study_age: {older_than: P1Y}}
    action: expire
"""


class _Page(HTMLParser):
    """Every <svg> with the figure it sits in and its text; table cells with their data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.figure: str | None = None
        self.svgs: dict[str, list[str]] = {}
        self.depth = 0
        self.cells: list[tuple[dict[str, str | None], str]] = []
        self.cell: dict[str, str | None] | None = None
        self.text = ""
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: dict[str, str] = {}
        self.span: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "figure":
            self.figure = a.get("id")
        elif tag == "svg":
            self.depth += 1
            if self.depth == 1:
                assert self.figure is not None, "an SVG outside a figure"
                self.svgs.setdefault(self.figure, []).append("")
        elif tag == "td":
            self.cell, self.text = a, ""
        elif tag in ("strong", "span") and a.get("id"):
            self.span, self.text = a["id"], ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.depth -= 1
        elif tag == "figure":
            self.figure = None
        elif tag == "td" and self.cell is not None:
            self.cells.append((self.cell, self.text.strip()))
            self.cell = None
        elif tag in ("strong", "span") and self.span:
            self.ids[self.span] = self.text.strip()
            self.span = None

    def handle_data(self, data: str) -> None:
        if self.depth and self.figure:
            self.svgs[self.figure][-1] += data + "\n"
        self.text += data


def test_report_is_self_contained_and_matches_ilm_cost(archive: tuple[Path, list[StudySpec]],
                                                        tmp_path: Path) -> None:
    home, _ = archive
    policy = tmp_path / "ct.yaml"
    policy.write_text(CT_TO_WARM)
    expiring = tmp_path / "expire.yaml"
    expiring.write_text(EXPIRE_OLD)
    common = ["--years", "3", "--growth-gb-per-month", "20", "--growth-percent", "10", "--as-of", TODAY.isoformat(),
              "--policy", str(policy), "--policy", str(expiring), "--home", str(home)]
    out = tmp_path / "report.html"
    r = runner.invoke(app, ["report", "--html", str(out), *common])
    assert r.exit_code == 0, r.output
    assert str(out) in "".join(r.output.split())  # rich folds the path at the terminal width
    c = runner.invoke(app, ["cost", "--json", *common])
    assert c.exit_code == 0, c.output
    cost = json.loads(c.output)
    text = out.read_text(encoding="utf-8")

    # self-contained: no URL at all, no script, no external style or image
    assert "http://" not in text and "https://" not in text
    page = _Page()
    page.feed(text)
    page.close()
    assert not [t for t, a in page.tags if t in ("script", "link", "img", "iframe", "object")]
    assert not [a for _t, a in page.tags if a.get("src") or (a.get("href") or "#").split("#")[0]]

    # one SVG per chart, each with its series labels
    assert {k: len(v) for k, v in page.svgs.items()} == {
        f"chart-{n}": 1 for n in ("cost", "storage", "plans", "vetoes", "reads", "growth")}
    names = [s["name"] for s in cost["scenarios"]]
    assert names == ["keep everything on hot", "as it is, no policy", "ct-to-warm", "expire-old"]
    for name in names:
        assert name in page.svgs["chart-cost"][0]
    assert "hot" in page.svgs["chart-storage"][0] and "warm" in page.svgs["chart-storage"][0]
    for chart in ("chart-plans", "chart-vetoes"):
        assert "ct-to-warm" in page.svgs[chart][0] and "expire-old" in page.svgs[chart][0]
    assert "share of instances read per month" in page.svgs["chart-reads"][0]
    assert "bytes received" in page.svgs["chart-growth"][0]
    # the protections that vetoed: those of the plan of ilm plan, same policy, same day
    plan = runner.invoke(app, ["plan", "--json", "--policy", str(expiring), "--as-of", TODAY.isoformat(),
                               "--home", str(home)])
    assert plan.exit_code == 0, plan.output
    vetoes = json.loads(plan.output)["vetoes"]
    assert vetoes and all(k in page.svgs["chart-vetoes"][0] for k in vetoes)

    # the numbers are those of ilm cost --json
    per_year = {(a["data-scenario"], a["data-year"]): (a["data-total"], t) for a, t in page.cells
                if a.get("data-year")}
    for i, s in enumerate(cost["scenarios"]):
        for y in s["years"]:
            assert per_year[(str(i), str(y["year"]))] == (str(y["total"]), money_text(y['total']))
    totals = {a["data-scenario"]: t for a, t in page.cells if a.get("data-total") and not a.get("data-year")}
    assert totals == {str(i): money_text(s['total']) for i, s in enumerate(cost["scenarios"])}
    savings = {a["data-scenario"]: a["data-savings"] for a, _t in page.cells if a.get("data-savings")}
    assert savings == {str(i): str(s["savings"]) for i, s in enumerate(cost["scenarios"])}
    assert page.ids["monthly-total"] == money_text(cost['current']['monthly_total'])


def test_report_refuses_a_bad_policy_and_writes_nothing(archive: tuple[Path, list[StudySpec]],
                                                        tmp_path: Path) -> None:
    home, _ = archive
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nrules:\n  - id: x\n    when: {modality: CT}\n    action: {transition: tape}\n")
    out = tmp_path / "r.html"
    r = runner.invoke(app, ["report", "--html", str(out), "--policy", str(bad), "--home", str(home)])
    assert r.exit_code == 2 and "bad.yaml:5" in r.output
    assert not out.exists()
    r = runner.invoke(app, ["report", "--html", str(tmp_path / "no" / "r.html"), "--home", str(home)])
    assert r.exit_code == 2 and "existing folder" in r.output


def test_report_draws_the_recorded_storage_before_the_projection(archive: tuple[Path, list[StudySpec]],
                                                                 tmp_path: Path) -> None:
    home, specs = archive
    before = tmp_path / "before.html"
    r = runner.invoke(app, ["report", "--html", str(before), "--as-of", TODAY.isoformat(), "--home", str(home)])
    assert r.exit_code == 0, r.output
    assert "No snapshot of storage by tier recorded yet" in before.read_text(encoding="utf-8")
    # the first snapshot reconstructs the months since the first study arrived
    snap = runner.invoke(app, ["stats", "--snapshot", "--json", "--home", str(home)])
    assert snap.exit_code == 0, snap.output
    history = json.loads(snap.output)["tier_history"]
    assert len(history) > 24 and history[0]["reconstructed"]
    out = tmp_path / "after.html"
    r = runner.invoke(app, ["report", "--html", str(out), "--as-of", TODAY.isoformat(), "--home", str(home)])
    assert r.exit_code == 0, r.output
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    page.close()
    chart = page.svgs["chart-storage"][0]
    assert "recorded (before 0)" in chart and "years from now (0: today)" in chart
    assert "No snapshot of storage by tier recorded yet" not in page.text
    # the reconstructed month before the report's day holds every study received by then (all on hot)
    last = [h for h in history if h["month"] < TODAY.isoformat()[:7]][-1]
    by_then = [x for x in specs if (x.acquired_at + timedelta(minutes=10)).strftime("%Y-%m") <= last["month"]]
    assert last["tiers"]["hot"]["studies"] == len(by_then)


def test_report_pdf_has_the_same_sections_and_numbers(archive: tuple[Path, list[StudySpec]], tmp_path: Path) -> None:
    # the PDF is written by matplotlib with its texts as text: its content streams name every section,
    # every scenario and the same totals as ilm cost --json
    import zlib

    home, _ = archive
    policy = tmp_path / "ct.yaml"
    policy.write_text(CT_TO_WARM)
    common = ["--years", "3", "--growth-gb-per-month", "20", "--as-of", TODAY.isoformat(), "--policy", str(policy),
              "--home", str(home)]
    out = tmp_path / "report.pdf"
    r = runner.invoke(app, ["report", "--pdf", str(out), *common])
    assert r.exit_code == 0, r.output
    assert "pages" in r.output and not (tmp_path / "report.pdf.tmp").exists()
    raw = out.read_bytes()
    assert raw.startswith(b"%PDF-") and raw.rstrip().endswith(b"%%EOF")
    text = b""
    for chunk in raw.split(b"stream")[1:]:
        body = chunk.split(b"endstream")[0].strip(b"\r\n")
        try:
            text += zlib.decompress(body)
        except zlib.error:
            continue
    cost = json.loads(runner.invoke(app, ["cost", "--json", *common]).output)
    shown = text.decode("latin-1")
    for needle in ("Cost today", "Cost projection over 3 years", "Storage by tier over time", "What the policies do today",
                   "How the archive is used", "What the archive holds", "ct-to-warm"):
        assert needle.replace(" ", "") in shown.replace(" ", "") or _glyphs(needle, shown), needle
    for s in cost["scenarios"]:
        assert _glyphs(money_text(s["total"]), shown), s["total"]
    r = runner.invoke(app, ["report", "--home", str(home)])
    assert r.exit_code == 2 and "--html FILE, --pdf FILE" in r.output


def _glyphs(needle: str, content: str) -> bool:
    """matplotlib's PDF writes a line of text as one string in a TJ/Tj operator, with kerning
    offsets between glyph runs: look for the text with those runs joined."""
    import re

    runs = "".join(re.findall(r"\(((?:[^()\\]|\\.)*)\)", content))
    return needle.replace(" ", "") in runs.replace(" ", "").replace("\\", "")
