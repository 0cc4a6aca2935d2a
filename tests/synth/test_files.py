"""Synthetic DICOM files: real Part 10 files that ingest like real data."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pydicom
import pytest

from ilm.catalog.queries import StudyFilter
from ilm.service import ArchiveService, iter_files
from ilm.synth.files import completed, write_archive, write_files
from ilm.synth.plan import SOP, SynthConfig, plan, totals

REF = date(2025, 6, 30)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in iter_files([folder])}


def test_files_are_part10_and_ingest_without_rejections(service: ArchiveService, tmp_path: Path) -> None:
    cfg = SynthConfig(reference=REF, studies=40, seed=5, missing_rate=0.15)
    specs = plan(cfg)
    t = totals(specs)
    out = tmp_path / "synth"
    written = write_files(specs, out, seed=cfg.seed)
    files = list(iter_files([out]))
    assert written.files == len(files) == t.instances
    assert written.studies == 40 and written.series == t.series
    assert abs(written.bytes - t.size_bytes) < 0.02 * t.size_bytes

    by_uid = {se.series_uid: se for s in specs for se in s.series}
    for path in files[:: max(1, len(files) // 60)]:
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        se = by_uid[ds.SeriesInstanceUID]
        assert ds.SOPInstanceUID == se.sop_instance_uid(int(ds.InstanceNumber))
        assert ds.SOPClassUID == se.sop_class_uid and ds.Modality == se.modality
        assert (ds.Rows, ds.Columns) == (se.rows, se.columns)
        assert int(ds.get("NumberOfFrames", 1)) == se.frames
        assert len(ds.PixelData) == se.pixel_bytes
        assert ds.pixel_array.shape[-2:] == (se.rows, se.columns)

    report = service.import_paths([out])
    assert report.rejected == 0 and report.conflicts == 0, report.problems[:3]
    assert report.stored == t.instances
    assert report.bytes_stored == written.bytes

    summary = service.summary()
    assert sum(r.instances for r in summary["tier"]) == t.instances
    assert sum(r.size_bytes for r in summary["tier"]) == written.bytes
    assert sum(r.studies for r in summary["year"]) == 40
    assert {r.key for r in summary["modality"]} == set(t.by_modality)
    for r in summary["modality"]:
        assert r.studies == t.by_modality[r.key]

    for s in specs:
        d = service.study(s.study_uid)
        assert d is not None
        assert d.summary.instance_count == s.instance_count
        assert d.summary.series_count == len(s.series)
        assert d.summary.modalities == s.modalities
        assert set(d.sop_classes) == {se.sop_class_uid for se in s.series}
        assert d.summary.patient_id == s.patient.patient_id
        assert d.patient_age == s.patient_age
        assert d.summary.study_date == (None if "no_study_date" in s.defects else s.study_date)
        if {"bad_birth_date", "no_birth_date"} & set(s.defects):
            assert d.patient_birth_date is None
        elif not any(o.defects for o in specs if o.patient is s.patient):
            assert d.patient_birth_date == s.patient.birth_date
    assert any(s.defects for s in specs)

    again = service.import_paths([out])
    assert again.duplicates == t.instances and again.stored == 0


def test_mammography_files(tmp_path: Path) -> None:
    specs = [s for s in plan(SynthConfig(reference=REF, studies=600, seed=3))
             if any(se.body_part == "BREAST" and se.modality in ("MG", "OT") for se in s.series)]
    tomo_sc = [s for s in specs if any(se.sop_class_uid == SOP["SC"] for se in s.series)][:2]
    tomo = [s for s in specs if any(se.sop_class_uid == SOP["BTO"] for se in s.series)][:2]
    assert tomo_sc and tomo
    out = tmp_path / "mg"
    write_files(tomo_sc + tomo, out)
    seen = set()
    for p in iter_files([out]):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert ds.BodyPartExamined == "BREAST"
        assert ds.ImageLaterality in ("L", "R")
        seen.add((ds.SOPClassUID, ds.Modality, ds.ImageLaterality, ds.ViewPosition))
        if ds.SOPClassUID == SOP["BTO"]:
            assert int(ds.NumberOfFrames) >= 1
    assert {v[2] for v in seen} == {"L", "R"} and {v[3] for v in seen} == {"CC", "MLO"}
    assert {v[0] for v in seen} >= {SOP["MG"], SOP["BTO"], SOP["SC"]}


def test_files_are_deterministic_and_marker_skips(tmp_path: Path) -> None:
    cfg = SynthConfig(reference=REF, studies=6, seed=8)
    a, b = tmp_path / "a", tmp_path / "b"
    marker = tmp_path / "a.json"
    first = write_archive(cfg, a, marker=marker)
    assert not first.skipped and marker.exists()
    assert not any(p.name.endswith(".json") for p in a.rglob("*"))  # nothing but DICOM inside
    write_files(plan(cfg), b, seed=cfg.seed)
    assert _digest(a) == _digest(b)
    again = write_archive(cfg, a, marker=marker)
    assert again.skipped and again.files == first.files
    assert completed(marker, SynthConfig(reference=REF, studies=6, seed=9)) is None


@pytest.mark.parametrize("defect", ["no_study_date", "bad_birth_date", "odd_patient_age", "no_birth_date"])
def test_defects_are_written_as_planned(tmp_path: Path, defect: str) -> None:
    specs = plan(SynthConfig(reference=REF, studies=400, seed=4, missing_rate=0.2))
    s = next(s for s in specs if defect in s.defects)
    write_files([s], tmp_path)
    ds = pydicom.dcmread(next(iter_files([tmp_path])), stop_before_pixels=True)
    if defect == "no_study_date":
        assert "StudyDate" not in ds
    elif defect == "bad_birth_date":
        assert "XX" in str(ds.PatientBirthDate)
    elif defect == "no_birth_date":
        assert str(ds.PatientBirthDate) == "" and str(ds.PatientAge) == ""
    else:
        assert str(ds.PatientAge) == s.patient_age


def test_studies_listing_of_synthetic_archive(service: ArchiveService, tmp_path: Path) -> None:
    specs = plan(SynthConfig(reference=REF, studies=12, seed=21))
    write_files(specs, tmp_path / "x")
    service.import_paths([tmp_path / "x"])
    listed = service.studies(StudyFilter(limit=100))
    assert {s.study_instance_uid for s in listed} == {s.study_uid for s in specs}
