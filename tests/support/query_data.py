"""A small archive to query: patients, studies, series and instances with known
attributes, odd characters (SQL metacharacters, quotes, non-ASCII, PN groups)
and one quarantined study. Shared by the C-FIND, QIDO-RS and engine tests."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from ilm.catalog.retention import quarantine_study
from ilm.catalog.schema import access_log, studies
from ilm.models import IngestStatus
from ilm.service import ArchiveService

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
ROOT = "1.2.826.0.1.3680043.10.1234"


def uid(*parts: int) -> str:
    return ROOT + "." + ".".join(str(p) for p in parts)


PATIENTS: dict[str, dict[str, str]] = {
    "P1": dict(PatientID="PID001", PatientName="Doe^John", PatientBirthDate="19600101", PatientSex="M"),
    "P2": dict(PatientID="PID002", PatientName="doe^jane", PatientBirthDate="19850505", PatientSex="F"),
    "P3": dict(PatientID="PID_3%", PatientName="Müller^Hans", PatientBirthDate="19700707", PatientSex="M"),
    "P4": dict(PatientID="PID'4", PatientName="O'Brien^Pat", PatientBirthDate="", PatientSex="O"),
    "P5": dict(PatientID="PID005", PatientName="Hidden^Quarantined", PatientBirthDate="19500101", PatientSex="F"),
    "P6": dict(PatientID="PID006", PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう", PatientBirthDate="19900909",
               PatientSex="M"),
}

# study key -> (patient, study attributes, [(series attributes, [(sop class, instance number)])])
STUDIES: dict[str, tuple[str, dict[str, str], list[tuple[dict[str, Any], list[tuple[str, int]]]]]] = {
    "S1": ("P1", dict(StudyDate="20200115", StudyTime="101500", AccessionNumber="ACC1", StudyDescription="CT CHEST",
                      StudyID="1", ReferringPhysicianName="Smith^Anna"),
           [(dict(Modality="CT", SeriesNumber=1, SeriesDescription="AXIAL", BodyPartExamined="CHEST"),
             [(CT, 1), (CT, 2)]),
            (dict(Modality="CT", SeriesNumber=2, SeriesDescription="CORONAL", BodyPartExamined="CHEST"),
             [(CT, 1)])]),
    "S2": ("P1", dict(StudyDate="20201231", StudyTime="235959", AccessionNumber="ACC_2",
                      StudyDescription="MR BRAIN 100%", StudyID="2", ReferringPhysicianName="smith^anna"),
           [(dict(Modality="MR", SeriesNumber=1, SeriesDescription="T1", BodyPartExamined="HEAD"), [(MR, 1)]),
            (dict(Modality="SR", SeriesNumber=99, SeriesDescription="REPORT"), [(SR, 1)])]),
    "S3": ("P2", dict(StudyDate="20210301", StudyTime="0800", AccessionNumber="ACCX2",
                      StudyDescription="ct abdomen", StudyID="3"),
           [(dict(Modality="CT", SeriesNumber=3, SeriesDescription="ABD", BodyPartExamined="ABDOMEN"), [(CT, 7)])]),
    "S4": ("P3", dict(StudyDate="20190610", StudyTime="143000.123", AccessionNumber="ACC%4",
                      StudyDescription="Knie_links"),
           [(dict(Modality="MR", SeriesNumber=1, SeriesDescription="PD FS", BodyPartExamined="KNEE"), [(MR, 1)])]),
    "S5": ("P4", dict(StudyDate="", StudyTime="", AccessionNumber="ACC'5", StudyDescription="O'Brien's study"),
           [(dict(Modality="US", SeriesNumber=1), [(CT, 1)])]),
    "S6": ("P5", dict(StudyDate="20200115", StudyTime="090000", AccessionNumber="ACC6", StudyDescription="CT CHEST"),
           [(dict(Modality="CT", SeriesNumber=1, BodyPartExamined="CHEST"), [(CT, 1)])]),
    "S7": ("P6", dict(StudyDate="20220202", StudyTime="120000", AccessionNumber="ACC7", StudyDescription="CT HEAD"),
           [(dict(Modality="CT", SeriesNumber=1, BodyPartExamined="HEAD"), [(CT, 1)])]),
}

QUARANTINED = "S6"


@dataclass
class Archive:
    """UIDs of what was stored, by the keys of STUDIES (series: 'S1/1', instances: 'S1/1/2')."""

    study: dict[str, str] = field(default_factory=dict)
    series: dict[str, str] = field(default_factory=dict)
    instance: dict[str, str] = field(default_factory=dict)

    def key_of(self, uid_: str) -> str:
        for table in (self.study, self.series, self.instance):
            for k, v in table.items():
                if v == uid_:
                    return k
        raise KeyError(uid_)


def _part10(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def build_datasets() -> tuple[Archive, list[Dataset]]:
    arch = Archive()
    out = []
    for si, (skey, (pkey, study_attrs, series_list)) in enumerate(STUDIES.items(), 1):
        arch.study[skey] = uid(si)
        for ri, (series_attrs, insts) in enumerate(series_list, 1):
            arch.series[f"{skey}/{ri}"] = uid(si, ri)
            for ii, (sop_class, number) in enumerate(insts, 1):
                arch.instance[f"{skey}/{ri}/{ii}"] = uid(si, ri, ii)
                ds = Dataset()
                ds.SpecificCharacterSet = "ISO_IR 192"
                ds.SOPClassUID = sop_class
                ds.SOPInstanceUID = uid(si, ri, ii)
                ds.StudyInstanceUID = uid(si)
                ds.SeriesInstanceUID = uid(si, ri)
                ds.InstanceNumber = number
                for k, v in {**PATIENTS[pkey], **study_attrs, **series_attrs}.items():
                    setattr(ds, k, v)
                out.append(ds)
    return arch, out


def load(service: ArchiveService) -> Archive:
    """Store every dataset through the service, then quarantine S6."""
    arch, datasets = build_datasets()
    for ds in datasets:
        r = service.ingest_bytes(_part10(ds), "test")
        assert r.status is IngestStatus.STORED, r
    now = datetime.now(timezone.utc)
    with service.catalog.write() as conn:
        assert quarantine_study(conn, arch.study[QUARANTINED], rule="test", plan=None, until=now + timedelta(days=30),
                                now=now)
    return arch


def access_snapshot(service: ArchiveService) -> tuple[list[tuple[str, Any]], int]:
    """Every study's last access and the number of access log rows (queries must change neither)."""
    service.access.flush()
    with service.catalog.read() as conn:
        last = [(r[0], r[1]) for r in conn.execute(
            sa.select(studies.c.study_uid, studies.c.last_accessed_at).order_by(studies.c.study_uid))]
        n = conn.execute(sa.select(sa.func.count()).select_from(access_log)).scalar_one()
    return last, int(n)
