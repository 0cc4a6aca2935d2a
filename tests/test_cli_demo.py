"""`ilm demo` and `ilm synth` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from ilm.cli import app
from ilm.config import Settings, load_settings
from ilm.models import StudyFilter
from ilm.service import ArchiveService, iter_files
from ilm.synth.plan import SynthConfig, plan, totals

runner = CliRunner()
AS_OF = "2025-06-30"


@pytest.fixture(autouse=True)
def _no_ilm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("ILM_"):
            monkeypatch.delenv(k)


def _summary(home: Path) -> dict[str, list[object]]:
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        return svc.summary()  # type: ignore[return-value]
    finally:
        svc.close()


def test_demo_builds_ingests_and_summarises_twice(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--studies", "30", "--home", str(home), "--as-of", AS_OF])
    assert result.exit_code == 0, result.output
    out = result.output
    specs = plan(SynthConfig(reference=date.fromisoformat(AS_OF), studies=30))
    t = totals(specs)
    assert (home / "ilm.toml").exists()
    for m in t.by_modality:
        assert f"│ {m} " in out, m
    for title in ("By modality", "By study year", "By tier"):
        assert title in out
    assert f"stored {t.instances:,}" in out and "rejected 0" in out
    summary = _summary(home)
    # The demo ends with the lifecycle: a plan of the bundled policy, applied.
    assert "lifecycle: plan" in out and "audit trail" in out and "intact" in out
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        plans = [p for p in svc.plans() if not p.id.startswith("w")]  # w...: the watermark run's plan
        assert [p.state for p in plans] == ["applied"]
        expired = sum(1 for a in svc.plan_actions(plans[0].id) if a.decision == "expire" and a.state == "done")
        moved = sum(1 for a in svc.plan_actions(plans[0].id) if a.decision == "transition" and a.state == "done")
        assert moved > 0
        assert svc.audit_verify() == []
    finally:
        svc.close()
    assert sum(r.studies for r in summary["year"]) == 30 - expired  # type: ignore[attr-defined]
    assert {r.key for r in summary["tier"]} <= {"hot", "warm", "archive"}  # type: ignore[attr-defined]
    _assert_access_steps(out, home)

    again = runner.invoke(app, ["demo", "--studies", "30", "--home", str(home), "--as-of", AS_OF])
    assert again.exit_code == 0, again.output
    assert "reused" in again.output
    assert "stored 0" in again.output and f"duplicates {t.instances:,}" in again.output
    assert sum(r.studies for r in _summary(home)["year"]) == 30 - expired  # type: ignore[attr-defined]


def _assert_access_steps(out: str, home: Path) -> None:
    """The demo's recall, promotion on read and watermark run, checked in the catalog and audit log."""
    out = " ".join(out.split())  # rich wraps lines at the terminal width
    assert "access: recall from the archive tier" in out and "readable again from the restored copy" in out
    assert "retrieval_policy on_read moved it to hot" in out
    assert "capacity: watermark run" in out
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        restores = svc.restores(active_only=False)
        assert restores and all(r.state == "ready" for r in restores), restores
        actions = {e.action for e in svc.audit()}
        assert "promote" in actions, actions
        watermark_plans = [p for p in svc.plans() if p.id.startswith("w")]
        assert watermark_plans and all(p.state == "applied" for p in watermark_plans), watermark_plans
        # every instance still has a verified copy somewhere, wherever the steps moved it
        for s in svc.studies(StudyFilter(limit=1000)):
            assert s.tiers, s.study_instance_uid
    finally:
        svc.close()


def test_demo_keeps_an_existing_config(settings: Settings) -> None:
    before = (settings.home / "ilm.toml").read_text()
    result = runner.invoke(app, ["demo", "--studies", "8", "--home", str(settings.home), "--as-of", AS_OF])
    assert result.exit_code == 0, result.output
    assert (settings.home / "ilm.toml").read_text() == before
    assert sum(r.studies for r in _summary(settings.home)["year"]) <= 8  # type: ignore[attr-defined]


def test_synth_files_json(tmp_path: Path) -> None:
    out = tmp_path / "files"
    result = runner.invoke(app, ["synth", str(out), "--studies", "12", "--seed", "3", "--as-of", AS_OF, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    t = totals(plan(SynthConfig(reference=date.fromisoformat(AS_OF), studies=12, seed=3)))
    assert report["files"] == t.instances == len(list(iter_files([out])))
    assert report["studies"] == 12
    for p in list(iter_files([out]))[:5]:
        pydicom.dcmread(p)


def test_synth_catalog_only(settings: Settings) -> None:
    args = ["synth", "--catalog-only", "--studies", "3000", "--as-of", AS_OF, "--home", str(settings.home)]
    result = runner.invoke(app, [*args, "--json", "--workers", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    t = totals(plan(SynthConfig(reference=date.fromisoformat(AS_OF), studies=3000, scale=1.0)))
    assert report["studies"] == 3000 and report["size_bytes"] == t.size_bytes and report["instances"] == 0
    human = runner.invoke(app, args)
    assert human.exit_code == 0, human.output
    assert "3,000 were already there" in human.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["synth", "--studies", "5"], "OUT_DIR"),
        (["synth", "x", "--studies", "5", "--catalog-only"], "exclude"),
        (["synth", "x", "--studies", "5", "--with-instances"], "--catalog-only"),
        (["synth", "x", "--studies", "5", "--scale", "0"], "scale"),
        (["synth", "x", "--studies", "5", "--as-of", "yesterday"], "--as-of"),
    ],
)
def test_synth_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_demo_as_a_process(tmp_path: Path) -> None:
    """The real entry point, as `make demo` runs it, with ILM_HOME from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ILM_")}
    env["ILM_HOME"] = str(tmp_path / "h")
    r = subprocess.run([sys.executable, "-m", "ilm", "demo", "--studies", "10", "--as-of", AS_OF],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "By tier" in r.stdout and (tmp_path / "h" / "catalog.sqlite").exists()
