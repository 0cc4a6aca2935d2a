"""Holds, quarantine, restore, purge and the audit chain, through real tiers and catalog."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from ilm.audit import verify_chain
from ilm.catalog.audit import read_audit
from ilm.errors import IlmError, NotFound
from ilm.lifecycle import retention
from ilm.models import StudyFilter
from ilm.service import ArchiveService


def _study(service: ArchiveService, src: Path, tmp: Path, n: int = 3) -> tuple[str, str]:
    ds = pydicom.dcmread(src)
    for i in range(n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.555.{i + 1}"
        p = tmp / f"{i}.dcm"
        ds.save_as(p)
        service.ingest_path(p)
    return str(ds.StudyInstanceUID), str(ds.PatientID)


def _visible(service: ArchiveService) -> list[str]:
    return [s.study_instance_uid for s in service.studies(StudyFilter())]


def _hot_files(service: ArchiveService) -> int:
    return sum(1 for _ in service.settings.resolve("tiers/hot").rglob("*.dcm"))


def test_expire_hides_restore_brings_back(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid, _ = _study(service, pydicom_test_files / "CT_small.dcm", tmp_path)
    assert retention.expire_study(service.catalog, uid, quarantine=timedelta(days=30), by="alice", rule="r1")
    assert _visible(service) == []
    assert _hot_files(service) == 3  # quarantine deletes nothing
    retention.restore(service.catalog, uid, by="bob")
    assert _visible(service) == [uid]
    with pytest.raises(IlmError, match="not quarantined"):
        retention.restore(service.catalog, uid, by="bob")


def test_purge_only_after_quarantine_and_leaves_tombstone(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid, _ = _study(service, pydicom_test_files / "CT_small.dcm", tmp_path)
    retention.expire_study(service.catalog, uid, quarantine=timedelta(days=30), by="alice", rule="r1", plan="p1")
    early = retention.purge(service.catalog, service.tier, by="carol")
    assert early.purged == [] and early.waiting == 1
    assert _hot_files(service) == 3
    later = datetime.now(timezone.utc) + timedelta(days=31)
    report = retention.purge(service.catalog, service.tier, by="carol", now=later)
    assert report.purged == [uid] and report.bytes_freed > 0
    assert _hot_files(service) == 0
    with service.catalog.read() as c:
        assert c.execute(sa.text("SELECT count(*) FROM instances")).scalar_one() == 0
        tomb = c.execute(sa.text("SELECT study_uid, rule_id, plan_id, approved_by, instance_count FROM tombstones")).one()
    assert tuple(tomb) == (uid, "r1", "p1", "carol", 3)
    with pytest.raises(NotFound, match="purged study cannot be restored"):
        retention.restore(service.catalog, uid, by="bob")


@pytest.mark.parametrize("scope", ["study", "patient"])
def test_hold_blocks_expiry_and_purge(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path, scope: str) -> None:
    uid, pid = _study(service, pydicom_test_files / "CT_small.dcm", tmp_path)
    target = uid if scope == "study" else pid
    hold_id = retention.place_hold(service.catalog, scope, target, "litigation 2026-114", by="legal")
    assert retention.expire_study(service.catalog, uid, quarantine=timedelta(0), by="alice") is False
    assert _visible(service) == [uid]
    retention.lift_hold(service.catalog, hold_id, by="legal")
    assert retention.expire_study(service.catalog, uid, quarantine=timedelta(0), by="alice")
    # a hold placed during quarantine still stops the purge
    retention.place_hold(service.catalog, scope, target, "new claim", by="legal")
    report = retention.purge(service.catalog, service.tier, by="carol", now=datetime.now(timezone.utc) + timedelta(days=1))
    assert report.purged == [] and "legal hold" in report.problems[0]
    assert _hot_files(service) == 3


def test_hold_needs_reason_and_valid_scope(service: ArchiveService) -> None:
    with pytest.raises(IlmError, match="reason"):
        retention.place_hold(service.catalog, "study", "1.2.3", "  ", by="x")
    with pytest.raises(IlmError, match="scope"):
        retention.place_hold(service.catalog, "site", "1.2.3", "why", by="x")
    with pytest.raises(NotFound):
        retention.lift_hold(service.catalog, 999, by="x")


def test_audit_chain_detects_change_and_removal(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid, _ = _study(service, pydicom_test_files / "CT_small.dcm", tmp_path)
    h = retention.place_hold(service.catalog, "study", uid, "review", by="legal")
    retention.lift_hold(service.catalog, h, by="legal")
    retention.expire_study(service.catalog, uid, quarantine=timedelta(days=1), by="alice", rule="r9")
    retention.restore(service.catalog, uid, by="bob")
    with service.catalog.read() as c:
        entries = list(read_audit(c))
    assert [e.action for e in entries] == ["hold.add", "hold.remove", "study.expire", "study.restore"]
    assert verify_chain(entries) == []
    with service.catalog.write() as c:
        c.execute(sa.text("UPDATE audit_log SET actor='mallory' WHERE action='study.expire'"))
    with service.catalog.read() as c:
        breaks = verify_chain(read_audit(c))
    assert [b.problem for b in breaks] == ["content changed after it was written"]
    with service.catalog.write() as c:
        c.execute(sa.text("UPDATE audit_log SET actor='alice' WHERE action='study.expire'"))
        c.execute(sa.text("DELETE FROM audit_log WHERE action='hold.remove'"))
    with service.catalog.read() as c:
        problems = [b.problem for b in verify_chain(read_audit(c))]
    assert any("missing" in p for p in problems)
