"""C-GET and C-MOVE with dcmtk's getscu and movescu (dcmtk's storescp as the move
destination), and Storage Commitment with pynetdicom as the SCU."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from conftest import write_config
from support.retrieve_data import ARCHIVE_TIER, StoredStudy, make_study
from support.servers import free_port, stop_pid, wait_port

from ilm.config import DestinationSettings, DicomSettings, Settings, load_settings
from ilm.dicom.parse import dataset_bytes
from ilm.dicom.server import DicomServer, start_dicom_server
from ilm.lifecycle.move import move_study
from ilm.service import ArchiveService

pytestmark = pytest.mark.dcmtk

AET = "ILMTEST"
DEST = "DEST"
SCU_LISTENER = "MODALITY"  # a Storage Commitment requester that takes reports on its own port
# Uncompressed samples, so that dcmtk's default proposals can take every one of them.
SOURCES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"]


@pytest.fixture(scope="module")
def dcmtk() -> None:
    for tool in ("getscu", "movescu", "storescp", "findscu"):
        if shutil.which(tool) is None:
            pytest.fail(f"dcmtk's {tool} is missing: run 'make test', which installs the dcmtk package")


@pytest.fixture
def settings(home: Path, catalog_url: str) -> Settings:
    write_config(home, catalog_url, ARCHIVE_TIER)
    return load_settings(home=home, env={})


class StoreSCP:
    """dcmtk's storescp on a free port, writing what it receives bit for bit (+B)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["storescp", "-aet", DEST, "+B", "+xa", "-od", str(folder), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)  # type: ignore[arg-type]

    def received(self) -> dict[str, bytes]:
        out = {}
        for p in self.folder.iterdir():
            blob = p.read_bytes()
            out[pydicom.dcmread(DicomBytesIO(blob), stop_before_pixels=True).SOPInstanceUID] = blob
        return out


@pytest.fixture
def storescp(tmp_path: Path, dcmtk: None) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "dest")
    try:
        yield scp
    finally:
        stop_pid(scp.proc.pid)


@pytest.fixture
def listener_port() -> int:
    return free_port()


@pytest.fixture
def scp(service: ArchiveService, storescp: StoreSCP, listener_port: int) -> Iterator[DicomServer]:
    dests = {DEST: DestinationSettings(host="127.0.0.1", port=storescp.port),
             SCU_LISTENER: DestinationSettings(host="127.0.0.1", port=listener_port)}
    srv = start_dicom_server(service, DicomSettings(ae_title=AET, host="127.0.0.1", port=0, destinations=dests))
    try:
        yield srv
    finally:
        srv.shutdown(grace=2)


@pytest.fixture
def study(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> StoredStudy:
    return make_study(service, [pydicom_test_files / n for n in SOURCES], tmp_path / "src", per_source=2)


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _keys(level: str, study: StoredStudy | None = None, series: str | None = None, sop: str | None = None,
          patient: str | None = None) -> list[str]:
    out = ["-k", f"QueryRetrieveLevel={level}"]
    if patient:
        out += ["-k", f"PatientID={patient}"]
    if study:
        out += ["-k", f"StudyInstanceUID={study.study_uid}"]
    if series:
        out += ["-k", f"SeriesInstanceUID={series}"]
    if sop:
        out += ["-k", f"SOPInstanceUID={sop}"]
    return out


def getscu(scp: DicomServer, out: Path, model: str, keys: list[str]) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    return _run("getscu", "-v", "-aet", "GETSCU", "-aec", AET, model, "+B", "-od", str(out), *keys,
                "127.0.0.1", str(scp.port))


def movescu(scp: DicomServer, model: str, keys: list[str], dest: str = DEST) -> subprocess.CompletedProcess[str]:
    return _run("movescu", "-d", "-aet", "MOVESCU", "-aec", AET, "-aem", dest, model, *keys, "127.0.0.1", str(scp.port))


def received(folder: Path) -> dict[str, bytes]:
    out = {}
    for p in folder.iterdir():
        blob = p.read_bytes()
        out[pydicom.dcmread(DicomBytesIO(blob), stop_before_pixels=True).SOPInstanceUID] = blob
    return out


def assert_as_stored(got: dict[str, bytes], study: StoredStudy, uids: list[str]) -> None:
    """Exactly these instances, each the stored dataset: the same elements and values;
    the very same dataset bytes when it travelled in its own (explicit VR) encoding."""
    assert sorted(got) == sorted(uids)
    for uid, blob in got.items():
        stored = pydicom.dcmread(DicomBytesIO(study.blobs[uid]))
        sent = pydicom.dcmread(DicomBytesIO(blob))
        assert sent == stored, uid
        if sent.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID:
            assert dataset_bytes(blob) == dataset_bytes(study.blobs[uid]), uid


def access_rows(service: ArchiveService) -> list[tuple[str, str, str, int]]:
    service.access.flush()
    with service.catalog.read() as c:
        return [tuple(r) for r in c.execute(sa.text(
            "SELECT study_uid, interface, who, instances FROM access_log ORDER BY id")).all()]


def locations(service: ArchiveService) -> list[tuple[str, str, str]]:
    with service.catalog.read() as c:
        return sorted(tuple(r) for r in c.execute(sa.text("SELECT tier, object_key, state FROM locations")).all())


def last_access(service: ArchiveService, uid: str) -> object:
    service.access.flush()
    detail = service.study(uid)
    assert detail is not None
    return detail.summary.last_accessed_at


# -- C-GET ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["-S", "-P"], ids=["study-root", "patient-root"])
def test_getscu_study_series_image(model: str, scp: DicomServer, service: ArchiveService, study: StoredStudy,
                                   tmp_path: Path) -> None:
    patient = study.patient_id if model == "-P" else None
    r = getscu(scp, tmp_path / "study", model, _keys("STUDY", study, patient=patient))
    assert r.returncode == 0, r.stderr
    assert "Number of Completed Suboperations : 6" in r.stderr, r.stderr
    assert_as_stored(received(tmp_path / "study"), study, study.sop_uids)
    series, sops = next(iter(study.series.items()))
    r = getscu(scp, tmp_path / "series", model, _keys("SERIES", study, series, patient=patient))
    assert r.returncode == 0, r.stderr
    assert_as_stored(received(tmp_path / "series"), study, sops)
    r = getscu(scp, tmp_path / "image", model, _keys("IMAGE", study, series, sops[1], patient=patient))
    assert r.returncode == 0, r.stderr
    assert_as_stored(received(tmp_path / "image"), study, [sops[1]])
    assert access_rows(service) == [(study.study_uid, "c-get", "GETSCU", 6), (study.study_uid, "c-get", "GETSCU", 3),
                                    (study.study_uid, "c-get", "GETSCU", 1)]
    assert last_access(service, study.study_uid) is not None


def test_getscu_patient_level_sends_every_study_of_the_patient(scp: DicomServer, service: ArchiveService,
                                                               study: StoredStudy, pydicom_test_files: Path,
                                                               tmp_path: Path) -> None:
    other = make_study(service, [pydicom_test_files / "CT_small.dcm"], tmp_path / "src2", series_count=1)
    stranger = make_study(service, [pydicom_test_files / "CT_small.dcm"], tmp_path / "src3", patient_id="RT-2")
    r = getscu(scp, tmp_path / "out", "-P", _keys("PATIENT", patient=study.patient_id))
    assert r.returncode == 0, r.stderr
    got = received(tmp_path / "out")
    assert sorted(got) == sorted(study.sop_uids + other.sop_uids)
    assert stranger.sop_uids[0] not in got
    assert sorted(row[0] for row in access_rows(service)) == sorted([study.study_uid, other.study_uid])


def test_get_of_unknown_study_sends_nothing_and_records_nothing(scp: DicomServer, service: ArchiveService,
                                                                 study: StoredStudy, tmp_path: Path) -> None:
    r = getscu(scp, tmp_path / "none", "-S", ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.3.4"])
    assert r.returncode == 0, r.stderr
    assert "Number of Completed Suboperations : 0" in r.stderr or "Received C-GET Response (Success)" in r.stderr
    assert received(tmp_path / "none") == {}
    assert access_rows(service) == []


def _pynetdicom_get(scp: DicomServer, identifier: Dataset, received_raw: dict[str, bytes] | None = None) -> list[Dataset]:
    """C-GET with pynetdicom as the SCU; the response statuses (and the raw datasets received)."""

    def on_store(event: evt.Event) -> int:
        if received_raw is not None:
            received_raw[event.request.AffectedSOPInstanceUID] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title="PYGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for cx in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(cx, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        roles.append(build_role(cx, scp_role=True))
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET, ext_neg=roles, max_pdu=0,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()


def test_get_sends_the_stored_bytes(scp: DicomServer, study: StoredStudy, caplog: pytest.LogCaptureFixture) -> None:
    """pynetdicom as the receiver: each dataset arrives exactly as stored (no decode/re-encode);
    those whose stored transfer syntax the requester accepted go out from their files."""
    caplog.set_level(logging.DEBUG, logger="ilm.dicom.sending")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study.study_uid
    raw: dict[str, bytes] = {}
    statuses = _pynetdicom_get(scp, ident, raw)
    assert statuses[-1].Status == 0x0000
    assert sorted(raw) == sorted(study.sop_uids)
    for uid, data in raw.items():
        stored = study.blobs[uid]
        if pydicom.dcmread(DicomBytesIO(stored)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1":
            assert data == dataset_bytes(stored), uid
            assert f"{uid}: no presentation context" not in caplog.text


def test_identifier_without_its_keys_is_refused_with_a_comment(scp: DicomServer, study: StoredStudy) -> None:
    ident = Dataset()
    ident.QueryRetrieveLevel = "SERIES"
    ident.StudyInstanceUID = study.study_uid
    [status] = _pynetdicom_get(scp, ident)
    assert status.Status == 0xA900
    assert "SeriesInstanceUID" in status.ErrorComment


# -- C-MOVE ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["-S", "-P"], ids=["study-root", "patient-root"])
def test_movescu_to_storescp(model: str, scp: DicomServer, service: ArchiveService, storescp: StoreSCP,
                             study: StoredStudy) -> None:
    patient = study.patient_id if model == "-P" else None
    series, sops = list(study.series.items())[1]
    r = movescu(scp, model, _keys("IMAGE", study, series, sops[0], patient=patient))
    assert r.returncode == 0, r.stderr
    assert_as_stored(storescp.received(), study, [sops[0]])
    r = movescu(scp, model, _keys("SERIES", study, series, patient=patient))
    assert r.returncode == 0, r.stderr
    assert_as_stored(storescp.received(), study, sops)
    r = movescu(scp, model, _keys("STUDY", study, patient=patient))
    assert r.returncode == 0, r.stderr
    assert "DIMSE Status                  : 0x0000: Success" in r.stderr, r.stderr
    assert_as_stored(storescp.received(), study, study.sop_uids)
    assert access_rows(service) == [(study.study_uid, "c-move", "MOVESCU", n) for n in (1, 3, 6)]


def test_move_to_an_unknown_destination_fails(scp: DicomServer, service: ArchiveService, storescp: StoreSCP,
                                              study: StoredStudy) -> None:
    r = movescu(scp, "-S", _keys("STUDY", study), dest="NOWHERE")
    assert "Refused: MoveDestinationUnknown" in r.stderr, r.stderr
    assert "Unknown move destination 'NOWHERE'" in r.stderr  # the Error Comment, as movescu -d prints it
    assert storescp.received() == {}
    assert access_rows(service) == []


def _pynetdicom_move(scp: DicomServer, study_uid: str, dest: str = DEST) -> list[Dataset]:
    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study_uid
    try:
        return [status for status, _ in assoc.send_c_move(ident, dest, StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()


def test_archived_study_is_refused_with_when_it_will_be_ready(scp: DicomServer, service: ArchiveService,
                                                               storescp: StoreSCP, study: StoredStudy,
                                                               tmp_path: Path) -> None:
    move_study(service.catalog, service.tier, study.study_uid, "vault")
    [status] = _pynetdicom_move(scp, study.study_uid)
    assert status.Status == 0xA702
    assert "restored first" in status.ErrorComment
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study.study_uid
    [status] = _pynetdicom_get(scp, ident)
    assert status.Status == 0xA702 and "restored first" in status.ErrorComment
    service.recall([study.study_uid], "test")
    [status] = _pynetdicom_move(scp, study.study_uid)
    assert status.Status == 0xA702
    assert "being restored; ready in about" in status.ErrorComment
    seconds = int(status.ErrorComment.split("about ")[1].split(" ")[0])
    assert 1 <= seconds <= 30
    r = getscu(scp, tmp_path / "archived", "-S", _keys("STUDY", study))
    assert "Refused: OutOfResourcesSubOperations" in r.stderr, r.stderr
    assert storescp.received() == {} and received(tmp_path / "archived") == {}
    assert access_rows(service) == []


def test_tier_down_fails_and_changes_nothing(scp: DicomServer, service: ArchiveService, storescp: StoreSCP,
                                             study: StoredStudy, settings: Settings) -> None:
    move_study(service.catalog, service.tier, study.study_uid, "warm")
    before = locations(service)
    warm = settings.resolve("tiers/warm")
    shutil.move(warm, warm.with_name("warm-unplugged"))
    try:
        [status] = _pynetdicom_move(scp, study.study_uid)
        assert status.Status == 0xA702
        assert "tier warm cannot be read" in status.ErrorComment
    finally:
        shutil.move(warm.with_name("warm-unplugged"), warm)
    assert storescp.received() == {}
    assert locations(service) == before
    assert access_rows(service) == []
    statuses = _pynetdicom_move(scp, study.study_uid)
    assert statuses[-1].Status == 0x0000
    assert len(storescp.received()) == 6


def test_queries_are_not_accesses(scp: DicomServer, service: ArchiveService, study: StoredStudy) -> None:
    r = _run("findscu", "-S", "-aec", AET, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}",
             "-k", "PatientID", "127.0.0.1", str(scp.port))
    assert r.returncode == 0, r.stderr
    assert access_rows(service) == []
    assert last_access(service, study.study_uid) is None
    _pynetdicom_move(scp, study.study_uid)
    assert [row[1] for row in access_rows(service)] == ["c-move"]


# -- Storage Commitment ---------------------------------------------------------------


def _commitment_request(study: StoredStudy, extra: list[tuple[str, str]]) -> tuple[Dataset, list[tuple[str, str]]]:
    pairs = [(study.sop_classes[u], u) for u in study.sop_uids[:3]] + extra
    info = Dataset()
    info.TransactionUID = generate_uid()
    info.ReferencedSOPSequence = []
    for cls, uid in pairs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = uid
        info.ReferencedSOPSequence.append(item)
    return info, pairs


def _report_lists(info: Dataset) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
    ok = [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])]
    bad = [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID, int(i.FailureReason))
           for i in info.get("FailedSOPSequence", [])]
    return ok, bad


def test_storage_commitment_on_the_same_association(scp: DicomServer, service: ArchiveService,
                                                    study: StoredStudy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ilm.dicom.commitment")
    unknown = ("1.2.840.10008.5.1.4.1.1.2", generate_uid())
    wrong_class = ("1.2.840.10008.5.1.4.1.1.7", study.sop_uids[3])  # stored as CT/MR, named SC here
    info, pairs = _commitment_request(study, [unknown, wrong_class])
    reports: list[tuple[int, Dataset]] = []
    got = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))
        got.set()
        return 0x0000, None

    ae = AE(ae_title="PYCOMMIT")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    try:
        status, reply = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0000
        assert got.wait(10), "no N-EVENT-REPORT on the open association"
        deadline = time.monotonic() + 5  # ilm logs the report's answer once it has it
        while "reported to PYCOMMIT on its association" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        assoc.release()
    assert "reported to PYCOMMIT on its association" in caplog.text
    assert "new association" not in caplog.text
    [(event_type, report)] = reports
    assert event_type == 2  # failures exist
    assert report.TransactionUID == info.TransactionUID
    assert report.RetrieveAETitle == AET
    ok, bad = _report_lists(report)
    assert ok == pairs[:3]
    assert bad == [(*unknown, 0x0112), (*wrong_class, 0x0119)]


def test_storage_commitment_report_on_a_new_association(scp: DicomServer, service: ArchiveService,
                                                        study: StoredStudy, listener_port: int) -> None:
    """The requester releases at once; the report comes to its configured address."""
    reports: list[tuple[int, Dataset, str]] = []
    got = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information, event.assoc.requestor.ae_title))
        got.set()
        return 0x0000, None

    listener = AE(ae_title=SCU_LISTENER)
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = listener.start_server(("127.0.0.1", listener_port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        info, pairs = _commitment_request(study, [])
        ae = AE(ae_title=SCU_LISTENER)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
        assert assoc.is_established
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assoc.release()
        assert status.Status == 0x0000
        assert got.wait(10), "no N-EVENT-REPORT on a new association"
    finally:
        server.shutdown()
    [(event_type, report, calling)] = reports
    assert event_type == 1 and calling == AET
    assert _report_lists(report) == (pairs, [])


def test_storage_commitment_counts_only_verified_copies(service: ArchiveService, study: StoredStudy) -> None:
    uid = study.sop_uids[0]
    with service.catalog.write() as c:
        c.execute(sa.text("UPDATE locations SET state = 'missing' WHERE object_key LIKE :k"), {"k": f"%{uid}%"})
    committed, failed = service.commitment([(study.sop_classes[u], u) for u in study.sop_uids[:2]])
    assert committed == [(study.sop_classes[study.sop_uids[1]], study.sop_uids[1])]
    assert failed == [(study.sop_classes[uid], uid, 0x0112)]


def test_bad_commitment_request_is_refused(scp: DicomServer) -> None:
    ae = AE(ae_title="PYCOMMIT")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    try:
        info = Dataset()
        info.TransactionUID = generate_uid()  # no Referenced SOP Sequence
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0115
        status, _ = assoc.send_n_action(info, 7, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0123
    finally:
        assoc.release()


def test_move_from_patient_root_at_study_level_with_pynetdicom(scp: DicomServer, storescp: StoreSCP,
                                                               study: StoredStudy) -> None:
    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientID = study.patient_id
    ident.StudyInstanceUID = study.study_uid
    try:
        statuses = [s for s, _ in assoc.send_c_move(ident, DEST, PatientRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()
    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == 6
    deadline = time.monotonic() + 5
    while len(storescp.received()) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_as_stored(storescp.received(), study, study.sop_uids)


# -- sent from the stored file; bad bytes never sent --------------------------------------


def _corrupt(service: ArchiveService, study: StoredStudy, sop_uid: str) -> None:
    """Overwrite the last bytes of the instance's file on its tier (its pixel data), keeping its size."""
    [ref] = service.instances_to_read(study.study_uid, sop_uid=sop_uid)
    path = service.tier(ref.tier).root / ref.key  # type: ignore[attr-defined]
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\xa5" * 16)


def _uids(value: object) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]  # type: ignore[attr-defined]


def _study_level(study_uid: str) -> Dataset:
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study_uid
    return ident


def _move_responses(scp: DicomServer, study_uid: str) -> list[tuple[Dataset, Dataset | None]]:
    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    try:
        return list(assoc.send_c_move(_study_level(study_uid), DEST, StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()


@pytest.mark.parametrize("bad", [0, 3], ids=["first-instance", "later-instance"])
def test_corrupted_file_is_not_sent_and_the_move_reports_it(bad: int, scp: DicomServer, service: ArchiveService,
                                                            storescp: StoreSCP, study: StoredStudy) -> None:
    """A file on the hot tier whose bytes no longer match the catalog's SHA-256 is not sent;
    the others are, and the final response is a Warning naming the failed instance."""
    order = [r.sop_uid for r in service.instances_to_read(study.study_uid)]
    _corrupt(service, study, order[bad])
    responses = _move_responses(scp, study.study_uid)
    status, identifier = responses[-1]
    assert status.Status == 0xB000  # Warning: Sub-operations Complete - One or more Failures
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (5, 1)
    assert identifier is not None and _uids(identifier.FailedSOPInstanceUIDList) == [order[bad]]
    good = [u for u in study.sop_uids if u != order[bad]]
    deadline = time.monotonic() + 10
    while len(storescp.received()) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_as_stored(storescp.received(), study, good)
    raw: dict[str, bytes] = {}
    statuses = _pynetdicom_get(scp, _study_level(study.study_uid), raw)
    assert statuses[-1].Status == 0xB000
    assert (statuses[-1].NumberOfCompletedSuboperations, statuses[-1].NumberOfFailedSuboperations) == (5, 1)
    assert sorted(raw) == sorted(good)


def test_move_where_every_instance_is_bad_fails(scp: DicomServer, service: ArchiveService, storescp: StoreSCP,
                                                study: StoredStudy) -> None:
    for uid in study.sop_uids:
        _corrupt(service, study, uid)
    status, identifier = _move_responses(scp, study.study_uid)[-1]
    assert status.Status == 0xA702  # Refused: Out of Resources - Unable to perform sub-operations
    assert status.NumberOfFailedSuboperations == 6 and status.NumberOfCompletedSuboperations == 0
    assert identifier is not None and sorted(_uids(identifier.FailedSOPInstanceUIDList)) == sorted(study.sop_uids)
    assert storescp.received() == {}


def test_file_moved_between_check_and_send_is_read_again(service: ArchiveService, storescp: StoreSCP,
                                                         study: StoredStudy, caplog: pytest.LogCaptureFixture) -> None:
    """ilm.dicom.sending directly: an instance sent from its checked file; one whose file was
    replaced since it was checked is read again (``reread``) and sent as a dataset; an
    Unsendable fails without anything sent."""
    from ilm.dicom.sending import StoredFile, Unsendable, send_files_over

    refs = service.instances_to_read(study.study_uid)
    ct = [r for r in refs if r.sop_class_uid == CTImageStorage][:2]
    ae = AE(ae_title="ILMSEND")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", storescp.port, ae_title=DEST, max_pdu=0)
    assert assoc.is_established
    rereads: list[str] = []
    caplog.set_level(logging.DEBUG, logger="ilm.dicom.sending")

    def reread(ref: object) -> bytes:
        rereads.append(ref.sop_uid)  # type: ignore[attr-defined]
        return service.read(ref)  # type: ignore[arg-type]

    try:
        send_files_over(assoc)
        checked = [service.checked_file(r) for r in ct]
        assert all(c is not None for c in checked)
        path = checked[1].path  # type: ignore[union-attr]
        path.chmod(0o644)
        copy = path.with_name("copy")
        copy.write_bytes(path.read_bytes())
        copy.replace(path)  # the same bytes under another inode: not the file that was checked
        for ref, c in zip(ct, checked):
            status = assoc.send_c_store(StoredFile(ref.sop_class_uid, ref.sop_uid, c, lambda r=ref: reread(r)))  # type: ignore[arg-type]
            assert status.Status == 0x0000
        with pytest.raises(Exception, match="not sent: unreadable"):
            assoc.send_c_store(Unsendable(ct[0].sop_class_uid, ct[0].sop_uid, "unreadable"))
    finally:
        assoc.release()
    assert rereads == [ct[1].sop_uid]
    assert "sent converted" not in caplog.text  # the first went out from its file, in its stored syntax
    assert_as_stored(storescp.received(), study, [r.sop_uid for r in ct])


def test_checked_file_is_only_for_plain_files_that_match(service: ArchiveService, study: StoredStudy) -> None:
    from ilm.errors import IntegrityError

    ref = service.instances_to_read(study.study_uid)[0]
    checked = service.checked_file(ref)
    assert checked is not None and checked.size == ref.size
    with checked.open() as fh:
        assert fh.read() == study.blobs[ref.sop_uid]
    _corrupt(service, study, ref.sop_uid)
    with pytest.raises(IntegrityError, match="does not match its SHA-256"):
        service.checked_file(ref)
    with pytest.raises(IntegrityError, match="written since it was checked"):
        checked.open()


def test_move_ends_when_the_destination_aborts(scp: DicomServer, study: StoredStudy, listener_port: int) -> None:
    """The C-MOVE sub-association (ilm.dicom.sending's loop) ends when the destination aborts
    it: the move answers with what was sent and what failed instead of hanging."""
    got: list[str] = []

    def on_store(event: evt.Event) -> int:
        got.append(str(event.request.AffectedSOPInstanceUID))
        if len(got) == 2:
            event.assoc.abort()
        return 0x0000

    ae = AE(ae_title=SCU_LISTENER)
    for cx in (CTImageStorage, MRImageStorage):
        ae.add_supported_context(cx, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    dest = ae.start_server(("127.0.0.1", listener_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        started = time.monotonic()
        ae_scu = AE(ae_title="PYMOVE")
        ae_scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae_scu.associate("127.0.0.1", scp.port, ae_title=AET)
        try:
            responses = list(assoc.send_c_move(_study_level(study.study_uid), SCU_LISTENER,
                                               StudyRootQueryRetrieveInformationModelMove))
        finally:
            assoc.release()
        assert time.monotonic() - started < 60
    finally:
        dest.shutdown()
    status = responses[-1][0]
    assert status.Status in (0xB000, 0xA702), status
    assert status.NumberOfCompletedSuboperations <= 2
    assert status.NumberOfCompletedSuboperations + status.NumberOfFailedSuboperations == 6


def test_files_whose_meta_names_other_uids_are_sent_under_their_own(scp: DicomServer, service: ArchiveService,
                                                                    storescp: StoreSCP, pydicom_test_files: Path,
                                                                    tmp_path: Path) -> None:
    """Stored files whose file meta still names another instance (copies edited without updating
    their meta are common) reach the destination each under its own SOP Instance UID: the file
    meta does not name the C-STORE's Affected SOP Instance UID, the dataset does."""
    study_uid = "1.2.826.0.1.3680043.10.990"
    folder = tmp_path / "stale-meta"
    folder.mkdir()
    blobs = {}
    for i in (1, 2):
        ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, f"{study_uid}.1", f"{study_uid}.1.{i}"
        assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID  # the meta names the original
        ds.save_as(folder / f"{i}.dcm")
        blobs[ds.SOPInstanceUID] = (folder / f"{i}.dcm").read_bytes()
    for p in sorted(folder.iterdir()):
        assert service.ingest_path(p).status.value == "stored"
    r = movescu(scp, "-S", ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"])
    assert r.returncode == 0, r.stderr
    got = storescp.received()
    assert sorted(got) == sorted(blobs)
    for uid, blob in got.items():
        assert pydicom.dcmread(DicomBytesIO(blob)) == pydicom.dcmread(DicomBytesIO(blobs[uid])), uid


# -- how the instances go out: framed from memory, or from their files; fewer pendings ---------


@pytest.mark.parametrize("in_memory", [True, False], ids=["framed-from-memory", "from-file"])
def test_move_sends_each_instance_as_stored_either_way(in_memory: bool, scp: DicomServer, storescp: StoreSCP,
                                                       study: StoredStudy, monkeypatch: pytest.MonkeyPatch) -> None:
    """An instance up to ``IN_MEMORY_BYTES`` goes out framed by ilm.dicom.store_wire, a larger one
    from its file through pynetdicom: dcmtk's storescp receives each as stored either way."""
    import ilm.dicom.retrieve as retrieve
    from ilm.dicom import sending

    used: list[str] = []
    for name in ("StoredBytes", "StoredFile"):
        cls = getattr(sending, name)
        plain = cls.send

        def spy(self: Any, *args: Any, _plain: Any = plain, _name: str = name, **kwargs: Any) -> Any:
            used.append(_name)
            return _plain(self, *args, **kwargs)

        monkeypatch.setattr(cls, "send", spy)
    monkeypatch.setattr(retrieve, "IN_MEMORY_BYTES", 32 * 1024 * 1024 if in_memory else 0)
    r = movescu(scp, "-S", _keys("STUDY", study))
    assert r.returncode == 0, r.stderr
    assert_as_stored(storescp.received(), study, study.sop_uids)
    assert set(used) == {"StoredBytes" if in_memory else "StoredFile"}


@pytest.mark.parametrize("interval,pendings", [(0.0, 6), (1e9, 1)], ids=["every-one", "first-only"])
def test_move_sends_pending_responses_at_most_each_interval(interval: float, pendings: int, scp: DicomServer,
                                                            storescp: StoreSCP, study: StoredStudy,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Pending C-MOVE responses are optional (PS3.4 C.4.2.3.1): ilm sends the first and then at
    most one per PENDING_INTERVAL_SECONDS; the final response still counts every sub-operation."""
    import ilm.dicom.retrieve as retrieve

    monkeypatch.setattr(retrieve, "PENDING_INTERVAL_SECONDS", interval)
    responses = _move_responses(scp, study.study_uid)
    statuses = [status.Status for status, _ in responses]
    assert statuses.count(0xFF00) == pendings
    assert statuses[-1] == 0x0000
    final = responses[-1][0]
    assert final.NumberOfCompletedSuboperations == 6 and final.NumberOfFailedSuboperations == 0
    assert_as_stored(storescp.received(), study, study.sop_uids)
