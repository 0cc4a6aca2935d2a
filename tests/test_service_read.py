"""Reading instances back from whichever tier holds them, and access tracking."""

from __future__ import annotations

from pathlib import Path

import pydicom
import sqlalchemy as sa

from ilm.lifecycle.move import move_study
from ilm.service import ArchiveService


def _study(service: ArchiveService, src: Path, tmp: Path, n: int = 3) -> tuple[str, list[bytes]]:
    ds = pydicom.dcmread(src)
    blobs = []
    for i in range(n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.333.{i + 1}"
        ds.InstanceNumber = n - i
        p = tmp / f"{i}.dcm"
        ds.save_as(p)
        blobs.append(p.read_bytes())
        service.ingest_path(p)
    return str(ds.StudyInstanceUID), blobs


def test_reads_come_from_any_tier(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid, blobs = _study(service, pydicom_test_files / "CT_small.dcm", tmp_path)
    refs = service.instances_to_read(uid)
    assert [r.tier for r in refs] == ["hot"] * 3
    assert sorted(service.read(r) for r in refs) == sorted(blobs)
    assert [r.sop_uid for r in refs][0].endswith(".3")  # ordered by instance number
    move_study(service.catalog, service.tier, uid, "warm")
    refs = service.instances_to_read(uid)
    assert [r.tier for r in refs] == ["warm"] * 3
    assert sorted(service.read(r) for r in refs) == sorted(blobs)
    one = service.instances_to_read(uid, sop_uid=refs[0].sop_uid)
    assert [r.sop_uid for r in one] == [refs[0].sop_uid]
    assert service.instances_to_read("1.2.3.4") == []


def test_access_is_recorded_in_batches(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid, _ = _study(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=1)
    assert service.study(uid).summary.last_accessed_at is None  # type: ignore[union-attr]
    service.note_access(uid, "wado-rs", "viewer", 1)
    service.note_access(uid, "c-get", "PACS_AE", 1)
    service.access.flush()
    with service.catalog.read() as c:
        rows = c.execute(sa.text("SELECT interface, who FROM access_log ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("wado-rs", "viewer"), ("c-get", "PACS_AE")]
    assert service.study(uid).summary.last_accessed_at is not None  # type: ignore[union-attr]
