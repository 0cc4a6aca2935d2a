"""C-FIND with a client nobody here wrote: dcmtk's findscu, Patient Root (-P) and Study Root (-S).

Responses are extracted by findscu itself (-X) and read back with pydicom;
final statuses and error comments are read from findscu's log (-v, -d).
"""

from __future__ import annotations

import inspect
import io
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from support import query_data as qd
from support.query_data import CT, MR, uid

from ilm.config import DicomSettings
from ilm.dicom import find as find_handler
from ilm.dicom.server import DicomServer, start_dicom_server
from ilm.errors import CatalogError
from ilm.service import ArchiveService

pytestmark = [pytest.mark.dcmtk, pytest.mark.filterwarnings("ignore:Invalid value for VR")]

AET = "ILMFIND"


@pytest.fixture(scope="module")
def dcmtk() -> None:
    if shutil.which("findscu") is None:
        pytest.fail("dcmtk's findscu is missing: run 'make test', which installs the dcmtk package")


@pytest.fixture
def archive(service: ArchiveService) -> qd.Archive:
    return qd.load(service)


@pytest.fixture
def scp(service: ArchiveService, archive: qd.Archive, dcmtk: None) -> Iterator[DicomServer]:
    srv = start_dicom_server(service, DicomSettings(ae_title=AET, host="127.0.0.1", port=0))
    try:
        yield srv
    finally:
        srv.shutdown(grace=2)


@dataclass
class Answer:
    responses: list[Dataset]   # the pending responses' identifiers, in order
    status: int                # the final status
    log: str

    def values(self, keyword: str) -> list[str]:
        return [str(r.get(keyword, "")) for r in self.responses]


def findscu(scp: DicomServer, tmp_path: Path, model: str, level: str, *keys: str, extra: tuple[str, ...] = ()) -> Answer:
    """Run findscu (model -P or -S) with ``-k`` keys; responses extracted to files."""
    out = tmp_path / f"rsp-{len(list(tmp_path.glob('rsp-*')))}"
    out.mkdir()
    args = ["findscu", "-d", "-aet", "TESTSCU", "-aec", AET, model, "-X", "-od", str(out),
            "-k", f"QueryRetrieveLevel={level}"]
    for k in keys:
        args += ["-k", k]
    r = subprocess.run([*args, *extra, "127.0.0.1", str(scp.port)], capture_output=True, timeout=120)
    log = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert r.returncode == 0, log
    m = re.search(r"Received Final Find Response", log)
    assert m, log
    status = re.search(r"DIMSE Status\s*:\s*0x([0-9a-f]{4})", log[m.start():])
    assert status, log
    responses = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return Answer(responses, int(status.group(1), 16), log)


def keys_of(arch: qd.Archive, answer: Answer, keyword: str) -> list[str]:
    return [arch.key_of(str(r[keyword].value)) for r in answer.responses]


# -- Study Root -----------------------------------------------------------------------


def test_study_level_wildcard_and_date_range(scp: DicomServer, archive: qd.Archive, tmp_path: Path) -> None:
    a = findscu(scp, tmp_path, "-S", "STUDY", "PatientName=doe*", "StudyDate=20200101-20201231",
                "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyDescription")
    assert a.status == 0x0000, a.log
    assert keys_of(archive, a, "StudyInstanceUID") == ["S2", "S1"]  # newest first
    s2, s1 = a.responses
    assert s2.QueryRetrieveLevel == "STUDY"
    assert str(s2.PatientName) == "Doe^John" and s2.StudyDate == "20201231"
    assert list(s2.ModalitiesInStudy) == ["MR", "SR"] and s1.ModalitiesInStudy == "CT"
    assert s2.NumberOfStudyRelatedInstances == 2 and s1.NumberOfStudyRelatedInstances == 3
    assert s2.StudyDescription == "MR BRAIN 100%"
    assert s1.RetrieveAETitle == AET


def test_open_ranges_and_time_range(scp: DicomServer, archive: qd.Archive, tmp_path: Path) -> None:
    a = findscu(scp, tmp_path, "-S", "STUDY", "StudyDate=-20200115", "StudyInstanceUID")
    assert sorted(keys_of(archive, a, "StudyInstanceUID")) == ["S1", "S4"]
    a = findscu(scp, tmp_path, "-S", "STUDY", "StudyDate=20201231-", "StudyInstanceUID")
    assert sorted(keys_of(archive, a, "StudyInstanceUID")) == ["S2", "S3", "S7"]
    a = findscu(scp, tmp_path, "-S", "STUDY", "StudyTime=1000-1200", "StudyInstanceUID")
    assert sorted(keys_of(archive, a, "StudyInstanceUID")) == ["S1", "S7"]


def test_wildcards_and_sql_metacharacters_match_literally(scp: DicomServer, archive: qd.Archive, tmp_path: Path) -> None:
    a = findscu(scp, tmp_path, "-S", "STUDY", "AccessionNumber=ACC?")
    assert sorted(a.values("AccessionNumber")) == ["ACC1", "ACC7"]
    a = findscu(scp, tmp_path, "-S", "STUDY", "AccessionNumber=ACC_2")
    assert keys_of(archive, a, "StudyInstanceUID") == ["S2"]  # not ACCX2: '_' is no wildcard
    a = findscu(scp, tmp_path, "-S", "STUDY", "PatientID=PID_3%")
    assert a.values("PatientID") == ["PID_3%"]
    a = findscu(scp, tmp_path, "-S", "STUDY", "PatientName=O'Brien*")
    assert a.values("PatientName") == ["O'Brien^Pat"]
    a = findscu(scp, tmp_path, "-S", "STUDY", "PatientID=x' OR '1'='1")
    assert a.status == 0x0000 and a.responses == []


def test_series_and_image_levels(scp: DicomServer, archive: qd.Archive, tmp_path: Path) -> None:
    a = findscu(scp, tmp_path, "-S", "SERIES", "Modality=MR", "SeriesInstanceUID", "SeriesNumber",
                "NumberOfSeriesRelatedInstances", "StudyInstanceUID")
    assert a.status == 0x0000, a.log
    assert sorted(keys_of(archive, a, "SeriesInstanceUID")) == ["S2/1", "S4/1"]
    assert all(r.QueryRetrieveLevel == "SERIES" and r.Modality == "MR" for r in a.responses)
    a = findscu(scp, tmp_path, "-S", "IMAGE", f"StudyInstanceUID={archive.study['S1']}",
                f"SeriesInstanceUID={archive.series['S1/1']}", "SOPInstanceUID", "SOPClassUID", "InstanceNumber")
    assert keys_of(archive, a, "SOPInstanceUID") == ["S1/1/1", "S1/1/2"]
    assert [r.InstanceNumber for r in a.responses] == [1, 2]
    assert all(r.SOPClassUID == CT for r in a.responses)


def test_study_root_has_no_patient_level(scp: DicomServer, tmp_path: Path) -> None:
    a = findscu(scp, tmp_path, "-S", "PATIENT", "PatientID")
    assert a.status == 0xA900, a.log
    assert "not one of the Study Root model" in a.log
    assert a.responses == []


# -- Patient Root ----------------------------------------------------------------------


def test_patient_root_every_level(scp: DicomServer, archive: qd.Archive, tmp_path: Path) -> None:
    a = findscu(scp, tmp_path, "-P", "PATIENT", "PatientName=*o*", "PatientID", "PatientBirthDate",
                "NumberOfPatientRelatedStudies")
    assert a.status == 0x0000, a.log
    by_id = {str(r.PatientID): r for r in a.responses}
    assert set(by_id) == {"PID001", "PID002", "PID'4", "PID006"}
    assert by_id["PID001"].NumberOfPatientRelatedStudies == 2
    assert by_id["PID001"].PatientBirthDate == "19600101"
    assert all(r.QueryRetrieveLevel == "PATIENT" for r in a.responses)

    a = findscu(scp, tmp_path, "-P", "STUDY", "PatientID=PID001", "StudyInstanceUID", "StudyDate")
    assert keys_of(archive, a, "StudyInstanceUID") == ["S2", "S1"]

    a = findscu(scp, tmp_path, "-P", "SERIES", "PatientID=PID001", f"StudyInstanceUID={archive.study['S1']}",
                "SeriesInstanceUID", "Modality", "SeriesNumber", "BodyPartExamined")
    assert keys_of(archive, a, "SeriesInstanceUID") == ["S1/1", "S1/2"]
    assert [r.SeriesNumber for r in a.responses] == [1, 2]
    assert {r.BodyPartExamined for r in a.responses} == {"CHEST"}

    a = findscu(scp, tmp_path, "-P", "IMAGE", "PatientID=PID001", f"StudyInstanceUID={archive.study['S2']}",
                f"SeriesInstanceUID={archive.series['S2/1']}", "SOPInstanceUID", "SOPClassUID")
    assert keys_of(archive, a, "SOPInstanceUID") == ["S2/1/1"]
    assert a.responses[0].SOPClassUID == MR


def test_empty_return_keys_are_filled_and_unknown_keys_come_back_empty(
    scp: DicomServer, archive: qd.Archive, tmp_path: Path
) -> None:
    a = findscu(scp, tmp_path, "-P", "STUDY", f"StudyInstanceUID={archive.study['S1']}",
                "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "AccessionNumber", "StudyDescription", "ReferringPhysicianName", "StudyID", "ModalitiesInStudy",
                "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "InstanceAvailability",
                "PatientBirthTime", "EthnicGroup", "ProcedureCodeSequence", "Modality")
    assert a.status == 0x0000, a.log
    [r] = a.responses
    assert (str(r.PatientName), r.PatientID, r.PatientBirthDate, r.PatientSex) == ("Doe^John", "PID001", "19600101", "M")
    assert (r.StudyDate, r.StudyTime, r.AccessionNumber, r.StudyDescription) == ("20200115", "101500", "ACC1", "CT CHEST")
    assert (str(r.ReferringPhysicianName), r.StudyID, r.ModalitiesInStudy) == ("Smith^Anna", "1", "CT")
    assert (r.NumberOfStudyRelatedSeries, r.NumberOfStudyRelatedInstances) == (2, 3)
    assert r.InstanceAvailability == "ONLINE"
    # keys ilm does not keep, and a lower-level key without a value: present, empty
    for kw in ("PatientBirthTime", "EthnicGroup", "Modality"):
        assert kw in r and r[kw].is_empty, kw
    assert "ProcedureCodeSequence" in r and len(r.ProcedureCodeSequence) == 0


def test_quarantined_study_is_not_found(scp: DicomServer, archive: qd.Archive, tmp_path: Path) -> None:
    for model, level, key in [
        ("-S", "STUDY", f"StudyInstanceUID={archive.study['S6']}"),
        ("-S", "STUDY", "AccessionNumber=ACC6"),
        ("-P", "PATIENT", "PatientID=PID005"),
        ("-S", "SERIES", f"SeriesInstanceUID={archive.series['S6/1']}"),
        ("-P", "IMAGE", f"SOPInstanceUID={archive.instance['S6/1/1']}"),
    ]:
        a = findscu(scp, tmp_path, model, level, key)
        assert a.status == 0x0000 and a.responses == [], (level, key, a.log)
    a = findscu(scp, tmp_path, "-S", "STUDY", "StudyDescription=CT CHEST", "StudyInstanceUID")
    assert keys_of(archive, a, "StudyInstanceUID") == ["S1"]  # S6 has the same description


# -- bad identifiers ---------------------------------------------------------------------


@pytest.mark.parametrize("model, level, key, status, comment", [
    ("-S", "STUDY", "StudyDate=2020*", 0xC000, "wildcards are not allowed"),
    ("-S", "STUDY", "StudyDate=20201301", 0xC000, "not a valid date"),
    ("-S", "STUDY", "StudyInstanceUID=1.2.*", 0xC000, "wildcards are not allowed in UIDs"),
    ("-S", "SERIES", "SeriesNumber=one", 0xC000, "not an integer"),
    ("-S", "STUDY", "Modality=CT", 0xA900, "Modality is a SERIES key"),
    ("-P", "PATIENT", "StudyDate=20200101", 0xA900, "StudyDate is a STUDY key"),
    ("-P", "WORKLIST", "PatientID", 0xA900, "level WORKLIST is not one of"),
], ids=["date-wildcard", "bad-date", "uid-wildcard", "bad-number", "lower-level-key", "study-key-at-patient-level",
        "unknown-level"])
def test_bad_identifiers_fail_with_a_comment(
    scp: DicomServer, tmp_path: Path, model: str, level: str, key: str, status: int, comment: str
) -> None:
    a = findscu(scp, tmp_path, model, level, key)
    assert a.status == status, a.log
    assert comment in a.log, a.log
    assert a.responses == []
    ok = findscu(scp, tmp_path, "-S", "STUDY", "PatientID=PID001")  # the next query is served
    assert ok.status == 0x0000 and len(ok.responses) == 2


def test_missing_level_is_0xA900(scp: DicomServer) -> None:
    ident = Dataset()
    ident.PatientID = "PID001"
    [(status, _)] = _pyscu_find(scp, ident)
    assert status.Status == 0xA900
    assert "QueryRetrieveLevel" in status.ErrorComment and len(status.ErrorComment) <= 64


def test_unsupported_key_with_a_value_is_a_pending_warning(scp: DicomServer, tmp_path: Path) -> None:
    a = findscu(scp, tmp_path, "-S", "STUDY", "PatientID=PID001", "PatientWeight=70")
    assert a.status == 0x0000
    assert len(a.responses) == 2
    assert a.log.count("DIMSE Status                  : 0xff01") == 2, a.log


# -- character sets ----------------------------------------------------------------------


def test_utf8_query_and_answer(scp: DicomServer, tmp_path: Path) -> None:
    a = findscu(scp, tmp_path, "-S", "STUDY", "SpecificCharacterSet=ISO_IR 192", "PatientName=Müller*",
                "StudyDescription")
    assert a.status == 0x0000, a.log
    [r] = a.responses
    assert r.SpecificCharacterSet == "ISO_IR 192"
    assert str(r.PatientName) == "Müller^Hans"
    a = findscu(scp, tmp_path, "-S", "STUDY", "SpecificCharacterSet=ISO_IR 192", "PatientName=*山田*")
    [r] = a.responses
    assert r.PatientName.alphabetic == "Yamada^Tarou" and r.PatientName.ideographic == "山田^太郎"


def test_latin1_query_is_decoded(scp: DicomServer) -> None:
    """A request in ISO_IR 100 (Latin-1): its name is decoded before matching; the answer is UTF-8."""
    ident = Dataset()
    ident.SpecificCharacterSet = "ISO_IR 100"
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientName = "Müller*"
    ident.StudyInstanceUID = ""
    answers = _pyscu_find(scp, ident)
    assert [s.Status for s, _ in answers] == [0xFF00, 0x0000]
    rsp = answers[0][1]
    assert rsp is not None and rsp.SpecificCharacterSet == "ISO_IR 192"
    assert str(rsp.PatientName) == "Müller^Hans"


def test_ascii_answer_echoes_the_request_charset(scp: DicomServer, tmp_path: Path) -> None:
    a = findscu(scp, tmp_path, "-S", "STUDY", "SpecificCharacterSet=ISO_IR 100", "PatientID=PID002", "PatientName")
    [r] = a.responses
    assert r.SpecificCharacterSet == "ISO_IR 100" and str(r.PatientName) == "doe^jane"


# -- cancel, failures, access ------------------------------------------------------------------


def _part10(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_cancel_stops_the_responses(scp: DicomServer, service: ArchiveService, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    n = 400
    build = find_handler._response
    built: list[object] = []

    def held_until_cancel(*args: Any) -> Dataset:
        # Without this the server may send all n answers before findscu's C-CANCEL
        # arrives (a correct Success, and a flaky test): the second answer waits
        # until the cancel is in the association's queue (not consumed: the handler
        # must still see it), at most 30 s.
        if len(built) == 1:
            event = inspect.currentframe().f_back.f_locals["event"]  # type: ignore[union-attr]
            deadline = time.monotonic() + 30
            while event.request.MessageID not in event.assoc.dimse.cancel_req and time.monotonic() < deadline:
                time.sleep(0.01)
        built.append(args)
        return build(*args)

    monkeypatch.setattr(find_handler, "_response", held_until_cancel)
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CT, uid(900, 1, i + 1)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(900), uid(900, 1)
        ds.PatientID, ds.Modality, ds.InstanceNumber = "BIG", "CT", i + 1
        assert service.ingest_bytes(_part10(ds), "test").status.value == "stored"
    a = findscu(scp, tmp_path, "-S", "IMAGE", f"StudyInstanceUID={uid(900)}", "SOPInstanceUID",
                extra=("--cancel", "1"))
    assert a.status == 0xFE00, a.log
    assert 1 <= len(a.responses) < n
    full = findscu(scp, tmp_path, "-S", "IMAGE", f"StudyInstanceUID={uid(900)}", "SOPInstanceUID")
    assert full.status == 0x0000 and len(full.responses) == n


def test_catalog_failure_and_handler_error(
    scp: DicomServer, service: ArchiveService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: object, **kwargs: object) -> None:
        raise CatalogError("catalog unavailable: OperationalError")

    monkeypatch.setattr(service, "query", down)
    a = findscu(scp, tmp_path, "-S", "STUDY", "PatientID")
    assert a.status == 0xA700, a.log
    assert "catalog unavailable" in a.log

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "query", boom)
    a = findscu(scp, tmp_path, "-S", "STUDY", "PatientID")
    assert a.status == 0xC211 and "boom" in a.log, a.log
    monkeypatch.undo()
    assert len(findscu(scp, tmp_path, "-S", "STUDY", "PatientID=PID001").responses) == 2


def test_queries_do_not_count_as_access(scp: DicomServer, service: ArchiveService, archive: qd.Archive,
                                        tmp_path: Path) -> None:
    before = qd.access_snapshot(service)
    findscu(scp, tmp_path, "-P", "PATIENT", "PatientID")
    findscu(scp, tmp_path, "-S", "STUDY", "StudyInstanceUID")
    findscu(scp, tmp_path, "-S", "SERIES", "SeriesInstanceUID")
    findscu(scp, tmp_path, "-S", "IMAGE", f"StudyInstanceUID={archive.study['S1']}", "SOPInstanceUID")
    assert qd.access_snapshot(service) == before


def _pyscu_find(scp: DicomServer, ident: Dataset) -> list[tuple[Dataset, Dataset | None]]:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    assert assoc.is_established
    try:
        return list(assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
