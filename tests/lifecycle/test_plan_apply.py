"""Plan a policy over a real catalog, then apply exactly that plan."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from ilm.catalog.plans import plan_action_rows
from ilm.lifecycle import retention
from ilm.lifecycle.apply import PlanChanged, apply_plan
from ilm.lifecycle.plan import make_plan, read_policy
from ilm.service import ArchiveService

# Studies are received today; the recently-accessed protection covers 30 days after that.
AS_OF = date.today() + timedelta(days=60)

POLICY = """
name: test
rules:
  - id: old-ct-expires
    when:
      modality: CT
      study_age: {older_than: P10Y}
    action: expire
  - id: mg-expires
    when:
      modality: MG
    action: expire
  - id: ct-to-warm
    when:
      modality: CT
      current_tier: hot
      study_age: {older_than: P2Y}
    action: {transition: warm}
"""


def _ingest(service: ArchiveService, src: Path, tmp: Path, tag: int, *, study_date: str, modality: str = "CT",
            n: int = 2, patient: str = "P1", birth: str = "19600101", first: int = 0) -> str:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.{tag}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.{tag}.1"
    ds.StudyDate = study_date
    ds.Modality = modality
    ds.PatientID = patient
    ds.PatientBirthDate = birth
    for i in range(first, first + n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{tag}.1.{i + 1}"
        p = tmp / f"{tag}-{i}.dcm"
        ds.save_as(p)
        assert service.ingest_path(p).status.value == "stored"
    return str(ds.StudyInstanceUID)


@pytest.fixture
def archive(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> dict[str, str]:
    src = pydicom_test_files / "CT_small.dcm"
    return {
        "old_ct": _ingest(service, src, tmp_path, 101, study_date="20100301"),
        "mid_ct": _ingest(service, src, tmp_path, 102, study_date="20200301"),
        "new_ct": _ingest(service, src, tmp_path, 103, study_date="20260101"),
        "mg": _ingest(service, src, tmp_path, 104, study_date="20230301", modality="MG", patient="P2"),
    }


def _policy(tmp_path: Path, service: ArchiveService, text: str = POLICY) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(text)
    return p


def _source(service: ArchiveService, path: Path):  # type: ignore[no-untyped-def]
    return read_policy(path, list(service.settings.tiers))


def test_plan_then_apply(service: ArchiveService, archive: dict[str, str], tmp_path: Path) -> None:
    src = _source(service, _policy(tmp_path, service))
    result = make_plan(service.catalog, service.settings, src, as_of=AS_OF, created_by="alice")
    plan = result.plan
    decided = {d.study_uid: (d.action.value, d.rule_id) for d in result.decisions}
    assert decided == {
        archive["old_ct"]: ("expire", "old-ct-expires"),
        archive["mid_ct"]: ("transition", "ct-to-warm"),
        archive["new_ct"]: ("keep", None),
        archive["mg"]: ("keep", "mg-expires"),  # vetoed by the mammography protection
    }
    assert plan.summary["vetoes"] == {"mammography": 1, "minimum_retention": 1}
    assert plan.summary["monthly_cost_after"] < plan.summary["monthly_cost_before"]
    with service.catalog.read() as c:
        rows = {r.study_uid: r for r in plan_action_rows(c, plan.id)}
    assert rows[archive["mg"]].vetoes[0]["protection"] == "mammography"
    assert rows[archive["mg"]].state == "kept"

    report = apply_plan(service.catalog, service.settings, service.tier, plan.id, src, approved_by="bob")
    assert report.done == 2 and not report.failed and not report.skipped
    mid = service.study(archive["mid_ct"])
    assert mid is not None and mid.summary.tiers == ("warm",)
    old = service.study(archive["old_ct"])
    assert old is not None and old.extra["state"] == "quarantined"
    assert service.study(archive["mg"]).extra["state"] == "active"  # type: ignore[union-attr]
    with service.catalog.read() as c:
        assert c.execute(sa.text("SELECT state, approved_by FROM plans")).one() == ("applied", "bob")
        actions = [r[0] for r in c.execute(sa.text("SELECT action FROM audit_log ORDER BY id"))]
    assert actions[0] == "plan.create" and "plan.apply" in actions and "study.expire" in actions


def test_apply_refuses_changed_policy(service: ArchiveService, archive: dict[str, str], tmp_path: Path) -> None:
    path = _policy(tmp_path, service)
    plan = make_plan(service.catalog, service.settings, _source(service, path), as_of=AS_OF, created_by="a").plan
    path.write_text(POLICY.replace("P10Y", "P5Y"))
    with pytest.raises(PlanChanged, match="changed since the plan"):
        apply_plan(service.catalog, service.settings, service.tier, plan.id, _source(service, path), approved_by="b")
    assert service.study(archive["old_ct"]).extra["state"] == "active"  # type: ignore[union-attr]


def test_apply_rechecks_hold_and_new_instances(service: ArchiveService, archive: dict[str, str], tmp_path: Path,
                                               pydicom_test_files: Path) -> None:
    src = _source(service, _policy(tmp_path, service))
    plan = make_plan(service.catalog, service.settings, src, as_of=AS_OF, created_by="a").plan
    retention.place_hold(service.catalog, "study", archive["old_ct"], "litigation", by="legal")
    _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 102, study_date="20200301", n=1, first=2)
    report = apply_plan(service.catalog, service.settings, service.tier, plan.id, src, approved_by="b")
    reasons = dict(report.skipped)
    assert reasons[archive["old_ct"]] == "a legal hold was added"
    assert reasons[archive["mid_ct"]].startswith("new instances arrived")
    assert service.study(archive["old_ct"]).extra["state"] == "active"  # type: ignore[union-attr]
    assert service.study(archive["mid_ct"]).summary.tiers == ("hot",)  # type: ignore[union-attr]


def test_as_of_previews_the_future(service: ArchiveService, archive: dict[str, str], tmp_path: Path) -> None:
    src = _source(service, _policy(tmp_path, service))
    later = make_plan(service.catalog, service.settings, src, as_of=date(2031, 6, 1), created_by="a", store=False)
    decided = {d.study_uid: d.action.value for d in later.decisions}
    assert decided[archive["mid_ct"]] == "expire"  # 2020 + 10y < 2031
    with service.catalog.read() as c:
        assert c.execute(sa.text("SELECT count(*) FROM plans")).scalar_one() == 0
