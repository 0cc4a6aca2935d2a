"""The lifecycle as an administrator drives it from the command line."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pydicom
import sqlalchemy as sa
from typer.testing import CliRunner

from ilm.cli import app
from ilm.config import Settings

runner = CliRunner()
LATER = (date.today() + timedelta(days=60)).isoformat()

POLICY = """
name: cli-test
rules:
  - id: old-expire
    when:
      study_age: {older_than: P10Y}
    action: expire
  - id: to-warm
    when:
      current_tier: hot
      study_age: {older_than: P2Y}
    action: {transition: warm}
"""


def _run(settings: Settings, *args: str, input: str | None = None) -> tuple[int, str]:
    r = runner.invoke(app, [*args, "--home", str(settings.home)], input=input)
    return r.exit_code, r.output


def _archive(settings: Settings, src: Path, tmp: Path) -> dict[str, str]:
    uids = {}
    for tag, day in ((201, "20090101"), (202, "20200101"), (203, "20260101")):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.{tag}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.{tag}.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{tag}.1.1"
        ds.StudyDate = day
        ds.PatientID = f"P{tag}"
        ds.PatientBirthDate = "19500101"  # without it, the pediatric check cannot clear the study
        ds.save_as(tmp / f"{tag}.dcm")
        uids[day[:4]] = ds.StudyInstanceUID
    assert _run(settings, "import", str(tmp))[0] == 0
    return uids


def test_policy_check_reports_file_line_field(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("transition: warm", "transition: glacier").replace("P10Y", "P10Q"))
    code, out = _run(settings, "policy", "check", str(bad))
    assert code == 2
    assert f"{bad}:6" in out and "older_than" in out  # the bad duration, located
    assert "glacier" in out
    good = tmp_path / "good.yaml"
    good.write_text(POLICY)
    code, out = _run(settings, "policy", "check", str(good))
    assert code == 0 and "OK" in out


def test_plan_show_explain_apply_audit(settings: Settings, pydicom_test_files: Path, tmp_path: Path) -> None:
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    uids = _archive(settings, pydicom_test_files / "CT_small.dcm", src_dir)
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY)
    code, out = _run(settings, "plan", "--policy", str(pol), "--as-of", LATER, "--json", "--csv", str(tmp_path / "d.csv"))
    assert code == 0, out
    plan = json.loads(out)
    assert {(a["action"], a["rule"]) for a in plan["actions"]} == {("expire", "old-expire"), ("transition", "to-warm")}
    assert "monthly_cost_before" in plan
    csv_text = (tmp_path / "d.csv").read_text()
    assert uids["2009"] in csv_text and "old-expire" in csv_text

    code, out = _run(settings, "plan", "show", plan["plan_id"], "--json")
    shown = json.loads(out)
    assert {a["study_uid"]: a["decision"] for a in shown["actions"]} == {uids["2009"]: "expire", uids["2020"]: "transition"}

    code, out = _run(settings, "explain", uids["2020"], "--policy", str(pol), "--as-of", LATER)
    assert code == 0 and "to-warm (decides)" in out and "old-expire" in out

    code, out = _run(settings, "apply", plan["plan_id"], "--approved-by", "dr-admin")
    assert code == 0, out
    assert "2 done" in out
    code, out = _run(settings, "studies", "--json")
    assert uids["2009"] not in out  # quarantined: hidden
    code, out = _run(settings, "show", uids["2020"], "--json")
    assert json.loads(out)["summary"]["tiers"] == ["warm"]

    code, out = _run(settings, "restore", uids["2009"], "--by", "dr-admin")
    assert code == 0
    code, out = _run(settings, "audit", "--json")
    actions = [e["action"] for e in json.loads(out)]
    assert actions[:2] == ["plan.create", "plan.apply"] and "study.restore" in actions
    code, out = _run(settings, "audit", "--verify")
    assert code == 0 and "intact" in out
    code, out = _run(settings, "audit", "--study", uids["2009"], "--json")
    assert {e["study_uid"] for e in json.loads(out)} == {uids["2009"]}


def test_holds_and_purge(settings: Settings, pydicom_test_files: Path, tmp_path: Path) -> None:
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    uids = _archive(settings, pydicom_test_files / "CT_small.dcm", src_dir)
    code, out = _run(settings, "hold", "add", "--study", uids["2009"], "--reason", "case 17")
    assert code == 0 and "hold 1 placed" in out
    code, out = _run(settings, "hold", "list", "--json")
    assert json.loads(out)[0]["reason"] == "case 17"
    assert _run(settings, "hold", "add", "--reason", "x")[0] == 2  # neither --study nor --patient
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY)
    plan = json.loads(_run(settings, "plan", "--policy", str(pol), "--as-of", LATER, "--json")[1])
    assert plan["vetoes"] == {"legal_hold": 1}
    assert _run(settings, "hold", "remove", "1")[0] == 0
    assert _run(settings, "hold", "remove", "1")[0] == 1  # already released
    code, out = _run(settings, "purge", "--yes")
    assert code == 0 and "nothing to purge" in out
    # Nothing is past quarantine, so purge deletes nothing even when asked
    url = settings.catalog_url
    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(sa.text("UPDATE studies SET state='quarantined', quarantine_until=:t WHERE study_uid=:u"),
                  {"t": "2000-01-01 00:00:00", "u": uids["2009"]})
    eng.dispose()
    code, out = _run(settings, "purge", "--yes")
    assert code == 0 and "purged 1 studies" in out
    assert _run(settings, "show", uids["2009"])[0] == 1


def test_plan_export_and_compare(settings: Settings, pydicom_test_files: Path, tmp_path: Path) -> None:
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    uids = _archive(settings, pydicom_test_files / "CT_small.dcm", src_dir)
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY)
    plan = json.loads(_run(settings, "plan", "--policy", str(pol), "--as-of", LATER, "--json")[1])
    exported = tmp_path / "peer.json"
    assert _run(settings, "plan", "export", plan["plan_id"], str(exported))[0] == 0
    peer = json.loads(exported.read_text())
    peer["decisions"] = [d for d in peer["decisions"] if d["study_uid"] != uids["2009"]]
    exported.write_text(json.dumps(peer))
    code, out = _run(settings, "plan", "--policy", str(pol), "--as-of", LATER, "--compare", str(exported), "--json")
    diffs = json.loads(out)["differences"]
    assert [(d["study_uid"], d["here"], d["peer"]) for d in diffs] == [(uids["2009"], "expire", "keep")]


def test_labels_steer_policies(settings: Settings, pydicom_test_files: Path, tmp_path: Path) -> None:
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    uids = _archive(settings, pydicom_test_files / "CT_small.dcm", src_dir)
    pol = tmp_path / "p.yaml"
    pol.write_text("""
name: teaching
rules:
  - id: teaching-stays
    when: {labels: teaching}
    action: keep
  - id: to-warm
    when:
      current_tier: hot
      study_age: {older_than: P2Y}
    action: {transition: warm}
""")
    assert _run(settings, "label", "add", uids["2020"], "teaching")[0] == 0
    assert _run(settings, "label", "add", "1.2.3.4", "teaching")[0] == 1
    plan = json.loads(_run(settings, "plan", "--policy", str(pol), "--as-of", LATER, "--json")[1])
    moved = {a["rule"]: a["studies"] for a in plan["actions"]}
    assert moved == {"to-warm": 1}  # the 2009 study only; 2020 is a teaching file
    assert _run(settings, "label", "remove", uids["2020"], "teaching")[0] == 0
    plan = json.loads(_run(settings, "plan", "--policy", str(pol), "--as-of", LATER, "--json")[1])
    assert {a["rule"]: a["studies"] for a in plan["actions"]} == {"to-warm": 2}
    audit = json.loads(_run(settings, "audit", "--json", "--study", uids["2020"])[1])
    assert [e["action"] for e in audit] == ["label.add", "label.remove"]
