"""Applies started in the background (REST API, dashboard) and their progress."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pydicom
import pytest

from ilm.errors import NothingToApply, NotFound
from ilm.service import ArchiveService

POLICY = """
name: all-to-warm
rules:
  - id: ct-to-warm
    when: {modality: CT, current_tier: hot}
    action: {transition: warm}
"""


def _ingest(service: ArchiveService, src: Path, tmp: Path, tag: int, n: int = 3) -> str:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.{tag}", f"1.2.826.0.1.3680043.10.{tag}.1"
    ds.StudyDate, ds.Modality, ds.PatientID = "20150301", "CT", f"P{tag}"
    for i in range(n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{tag}.1.{i + 1}"
        p = tmp / f"{tag}-{i}.dcm"
        ds.save_as(p)
        assert service.ingest_path(p).status.value == "stored"
    return str(ds.StudyInstanceUID)


def test_background_apply_reports_progress_and_ends_like_apply(
    service: ArchiveService, pydicom_test_files: Path, tmp_path: Path
) -> None:
    uids = [_ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 300 + k) for k in range(4)]
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    plan = service.plan(policy, as_of=date(2026, 6, 30), by="t").plan
    started = service.apply_start(plan.id, approved_by="alice")
    assert started.plan_id == plan.id and started.total == 4 and started.approved_by == "alice"
    end = service.apply_jobs.wait(plan.id, timeout=120)
    assert end is not None and end.state == "done", end
    assert (end.done, end.skipped, end.failed, end.handled) == (4, 0, 0, 4)
    assert end.bytes_moved > 0 and end.percent == 100.0 and end.finished_at is not None
    assert service.plan_get(plan.id).state == "applied"  # type: ignore[union-attr]
    for uid in uids:
        assert service.study(uid).summary.tiers == ("warm",)  # type: ignore[union-attr]
    assert service.apply_progress(plan.id) == end
    with pytest.raises(NothingToApply, match="no pending or failed action"):
        service.apply_start(plan.id, approved_by="alice")
    with pytest.raises(NotFound):
        service.apply_start("p00000000-000000", approved_by="alice")


def test_a_failing_apply_is_reported_not_raised(service: ArchiveService, pydicom_test_files: Path,
                                                tmp_path: Path) -> None:
    _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 310)
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    plan = service.plan(policy, as_of=date(2026, 6, 30), by="t").plan
    policy.write_text(POLICY.replace("all-to-warm", "changed"))  # apply refuses a changed policy
    service.apply_start(plan.id, approved_by="alice")
    end = service.apply_jobs.wait(plan.id, timeout=120)
    assert end is not None and end.state == "failed" and "changed" in end.error, end
    assert service.plan_get(plan.id).state == "planned"  # type: ignore[union-attr]
