"""Plan a policy over a real catalog, then apply exactly that plan."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
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
        assert c.execute(sa.text("SELECT count(*) FROM plan_rule_actions")).scalar_one() == 0  # a preview writes none


def test_actions_a_rule_decided_are_listed_paged_recorded_and_outlive_a_purge(
        service: ArchiveService, archive: dict[str, str], tmp_path: Path) -> None:
    """The database stores the expiries and moves a rule decided as rows of integers
    (plan_rule_actions), the others as full rows (plan_actions): the readers show both as one list."""
    from ilm.catalog.plans import plan_action_totals

    src = _source(service, _policy(tmp_path, service))
    plan = make_plan(service.catalog, service.settings, src, as_of=AS_OF, created_by="alice").plan
    with service.catalog.read() as c:
        n_rule = c.execute(sa.text("SELECT count(*) FROM plan_rule_actions WHERE plan_id = :p AND code > 0"),
                           {"p": plan.id}).scalar_one()
        n_full = c.execute(sa.text("SELECT count(*) FROM plan_actions WHERE plan_id = :p"), {"p": plan.id}).scalar_one()
        rows = list(plan_action_rows(c, plan.id))
        # Pages cut across the two tables in the same order as the whole list.
        paged = [r for off in range(0, 4) for r in plan_action_rows(c, plan.id, limit=1, offset=off)]
        two = list(plan_action_rows(c, plan.id, limit=2, offset=1))
        totals = plan_action_totals(c, plan.id)
    assert (n_rule, n_full) == (2, 1)  # old CT expires, mid CT moves; the mammogram is kept by a veto
    assert [r.study_uid for r in rows] == [archive["old_ct"], archive["mid_ct"], archive["mg"]]
    assert paged == rows and two == rows[1:3]
    old = rows[0]
    assert (old.decision, old.rule_id, old.reason, old.state, old.vetoes) == ("expire", "old-ct-expires", "expire",
                                                                               "pending", [])
    assert (rows[1].decision, rows[1].target_tier, rows[1].reason) == ("transition", "warm", "move to warm")
    assert old.fingerprint == f"{old.instance_count}/{old.size_bytes}//0" and old.instance_count == 2
    assert totals[("pending", "expire")][0] == 1 and totals[("pending", "transition")][0] == 1
    assert totals[("kept", "keep")][0] == 1

    report = apply_plan(service.catalog, service.settings, service.tier, plan.id, src, approved_by="bob")
    assert report.done == 2
    with service.catalog.read() as c:
        states = {r.study_uid: (r.state, r.reason) for r in plan_action_rows(c, plan.id)}
    assert states[archive["old_ct"]] == ("done", f"quarantined for {service.settings.lifecycle.quarantine_days} days")
    assert states[archive["mid_ct"]][0] == "done" and states[archive["mid_ct"]][1].startswith("moved 2 instances")

    # Purged: the study's row is gone, the plan still names it.
    later = datetime.now(timezone.utc) + timedelta(days=service.settings.lifecycle.quarantine_days + 1)
    retention.purge(service.catalog, service.tier, by="carol", now=later)
    assert service.study(archive["old_ct"]) is None
    with service.catalog.read() as c:
        after = {r.study_uid: r for r in plan_action_rows(c, plan.id)}
        left = c.execute(sa.text("SELECT count(*) FROM plan_rule_actions WHERE plan_id = :p AND code > 0"),
                         {"p": plan.id}).scalar_one()
    assert set(after) == set(states) and left == 1
    assert (after[archive["old_ct"]].decision, after[archive["old_ct"]].state) == ("expire", "done")
    assert after[archive["old_ct"]].fingerprint == old.fingerprint
