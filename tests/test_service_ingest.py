"""Ingest through the service layer: stored, duplicate, conflict, rejected."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from ilm.models import IngestStatus, StudyFilter
from ilm.service import ArchiveService


def _tier_files(service: ArchiveService, tier: str = "hot") -> list[Path]:
    root = service.settings.resolve(f"tiers/{tier}")
    return sorted(p for p in root.rglob("*") if p.is_file())


def _count(service: ArchiveService, table: str) -> int:
    with service.catalog.read() as c:
        return int(c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_store_then_duplicate_is_noop(service: ArchiveService, pydicom_test_files: Path) -> None:
    src = pydicom_test_files / "CT_small.dcm"
    first = service.ingest_path(src)
    assert first.status is IngestStatus.STORED
    files = _tier_files(service)
    assert len(files) == 1
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() == hashlib.sha256(src.read_bytes()).hexdigest()
    again = service.ingest_path(src)
    assert again.status is IngestStatus.DUPLICATE
    assert _tier_files(service) == files
    assert _count(service, "instances") == 1
    assert _count(service, "locations") == 1


def test_conflict_is_kept_aside_and_never_overwrites(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    src = pydicom_test_files / "CT_small.dcm"
    assert service.ingest_path(src).status is IngestStatus.STORED
    stored = _tier_files(service)[0]
    original = stored.read_bytes()
    ds = pydicom.dcmread(src)
    ds.PatientName = "Other^Person"
    other = tmp_path / "other.dcm"
    ds.save_as(other)
    r = service.ingest_path(other)
    assert r.status is IngestStatus.CONFLICT
    assert "other content" in r.reason
    assert Path(r.kept_aside_at).read_bytes() == other.read_bytes()
    assert stored.read_bytes() == original
    assert _count(service, "conflicts") == 1
    assert _count(service, "instances") == 1


def test_catalog_facts(service: ArchiveService, pydicom_test_files: Path) -> None:
    service.ingest_path(pydicom_test_files / "CT_small.dcm")
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    d = service.study(ds.StudyInstanceUID)
    assert d is not None
    assert d.summary.modalities == ("CT",)
    assert d.summary.instance_count == 1
    assert d.summary.patient_id == ds.PatientID
    assert d.sop_classes == (ds.SOPClassUID,)
    assert d.checksum_state == "verified"
    assert [loc.tier for loc in d.locations] == ["hot"]
    listed = service.studies(StudyFilter(modality="CT"))
    assert [s.study_instance_uid for s in listed] == [ds.StudyInstanceUID]
    assert service.studies(StudyFilter(modality="MR")) == []


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"hello world, not dicom at all" * 10, "not DICOM"),
        (b"\x00" * 128 + b"DICM", "not DICOM"),
    ],
    ids=["empty", "text", "preamble-only"],
)
def test_rejects_non_dicom_and_stores_nothing(service: ArchiveService, data: bytes, reason: str) -> None:
    r = service.ingest_bytes(data, "upload")
    assert r.status is IngestStatus.REJECTED
    assert reason in r.reason
    assert _tier_files(service) == []
    assert _count(service, "instances") == 0


def test_rejects_truncated_file(service: ArchiveService, pydicom_test_files: Path) -> None:
    data = (pydicom_test_files / "CT_small.dcm").read_bytes()
    r = service.ingest_bytes(data[: len(data) // 2], "half.dcm")
    assert r.status is IngestStatus.REJECTED
    assert "truncated" in r.reason
    assert _tier_files(service) == []
    assert _count(service, "studies") == 0


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_rejects_missing_uid(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path, keyword: str) -> None:
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    delattr(ds, keyword)
    p = tmp_path / "x.dcm"
    ds.save_as(p)
    r = service.ingest_path(p)
    assert r.status is IngestStatus.REJECTED
    assert keyword in r.reason
    assert _tier_files(service) == []
    assert _count(service, "instances") == 0


@pytest.mark.parametrize("bad", ["1.2.3/../../etc", "1.2\x00.3", "1." + "2" * 70, "1.2.a"])
def test_rejects_hostile_uid(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path, bad: str) -> None:
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    ds.SOPInstanceUID = bad
    p = tmp_path / "x.dcm"
    ds.save_as(p)
    r = service.ingest_path(p)
    assert r.status is IngestStatus.REJECTED
    assert "SOPInstanceUID" in r.reason
    assert _tier_files(service) == []


def test_every_pydicom_test_file(service: ArchiveService, pydicom_test_files: Path) -> None:
    """Valid files are stored, invalid ones rejected with a reason; nothing crashes."""
    report = service.import_paths([pydicom_test_files])
    assert report.total == sum(1 for p in pydicom_test_files.rglob("*") if p.is_file())
    assert report.stored > 50
    for r in report.problems:
        assert r.reason, r
    rejected = {Path(r.source).name for r in report.problems if r.status is IngestStatus.REJECTED}
    assert {"MR_truncated.dcm", "rtplan_truncated.dcm", "README.txt", "DICOMDIR"} <= rejected
    stored = _tier_files(service)
    assert len(stored) == _count(service, "instances") == _count(service, "locations")
    for f in stored:  # every stored object is a readable Part 10 file
        assert f.read_bytes()[128:132] == b"DICM"


def test_concurrent_ingest_keeps_catalog_consistent(service: ArchiveService, tmp_path: Path, pydicom_test_files: Path) -> None:
    """Many associations storing the same study at once: each instance once, counts exact."""
    from concurrent.futures import ThreadPoolExecutor

    base = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    blobs = []
    for i in range(24):
        base.SOPInstanceUID = f"1.2.826.0.1.3680043.10.999.{i + 1}"
        base.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.998.{i % 3 + 1}"
        base.InstanceNumber = i + 1
        p = tmp_path / f"{i}.dcm"
        base.save_as(p)
        blobs.append(p.read_bytes())
    work = blobs * 3  # every instance sent three times, interleaved
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda b: service.ingest_bytes(b, "assoc"), work))
    statuses = [r.status for r in results]
    assert [r.reason for r in results if r.status is IngestStatus.REJECTED] == []
    assert statuses.count(IngestStatus.STORED) == 24
    assert statuses.count(IngestStatus.DUPLICATE) == 48
    d = service.study(base.StudyInstanceUID)
    assert d is not None
    assert d.summary.instance_count == 24
    assert d.summary.series_count == 3
    assert d.summary.size_bytes == sum(len(b) for b in blobs)
    assert sum(s.instance_count for s in d.series) == 24
    assert _count(service, "locations") == 24
    assert len(_tier_files(service)) == 24


def test_same_dataset_under_another_header_is_a_duplicate(service: ArchiveService, pydicom_test_files: Path) -> None:
    """STOW-RS keeps the sender's header, C-STORE gets a rebuilt one: same instance."""
    from ilm.dicom.parse import dataset_bytes

    data = (pydicom_test_files / "CT_small.dcm").read_bytes()
    assert service.ingest_bytes(data, "stow").status is IngestStatus.STORED
    ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
    meta = ds.file_meta
    meta.ImplementationClassUID = "1.2.3.4.5"
    meta.ImplementationVersionName = "OTHER_SCU"
    again = service.ingest_dataset(meta, dataset_bytes(data), "cstore")
    assert again.status is IngestStatus.DUPLICATE
    assert _count(service, "conflicts") == 0


def test_resend_after_move_to_another_tier_is_a_duplicate_and_leaves_no_orphan(
    service: ArchiveService, pydicom_test_files: Path
) -> None:
    from ilm.lifecycle.move import move_study

    src = pydicom_test_files / "CT_small.dcm"
    service.ingest_path(src)
    uid = pydicom.dcmread(src).StudyInstanceUID
    assert move_study(service.catalog, service.tier, uid, "warm").moved == 1
    assert service.ingest_path(src).status is IngestStatus.DUPLICATE
    assert _tier_files(service, "hot") == []  # the re-sent copy written to hot was removed
    assert len(_tier_files(service, "warm")) == 1
