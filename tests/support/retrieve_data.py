"""Studies for the retrieve tests: real files from pydicom's test data under new UIDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from ilm.service import ArchiveService

ARCHIVE_TIER = """
[tiers.vault]
kind = "filesystem"
path = "tiers/vault"
archive = true
retrieval_latency_seconds = 30
"""


@dataclass
class StoredStudy:
    study_uid: str
    patient_id: str
    series: dict[str, list[str]] = field(default_factory=dict)  # series UID -> SOP UIDs in order
    blobs: dict[str, bytes] = field(default_factory=dict)       # SOP UID -> the stored file
    sop_classes: dict[str, str] = field(default_factory=dict)

    @property
    def sop_uids(self) -> list[str]:
        return [u for uids in self.series.values() for u in uids]


def make_study(service: ArchiveService, sources: list[Path], folder: Path, *, per_source: int = 1,
               series_count: int = 2, patient_id: str = "RT-1") -> StoredStudy:
    """Ingest ``per_source`` copies of each source file as one new study spread over
    ``series_count`` series; the pixel data and encoding of each file are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    study = StoredStudy(generate_uid(), patient_id)
    series_uids = [generate_uid() for _ in range(series_count)]
    n = 0
    for src in sources:
        for _ in range(per_source):
            ds = pydicom.dcmread(src)
            ds.StudyInstanceUID = study.study_uid
            ds.PatientID = patient_id
            ds.SeriesInstanceUID = series_uids[n % series_count]
            ds.SeriesNumber = n % series_count + 1
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = n + 1
            path = folder / f"{study.study_uid[-12:]}-{n}.dcm"
            ds.save_as(path)
            r = service.ingest_path(path)
            assert r.status.value == "stored", r
            study.series.setdefault(ds.SeriesInstanceUID, []).append(ds.SOPInstanceUID)
            study.blobs[ds.SOPInstanceUID] = path.read_bytes()
            study.sop_classes[ds.SOPInstanceUID] = str(ds.SOPClassUID)
            n += 1
    return study
