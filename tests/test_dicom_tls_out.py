"""DICOM over TLS for what ilm sends: C-MOVE sub-associations (to dcmtk's ``storescp +tls``)
and Storage Commitment reports on a new association (to a pynetdicom TLS listener).

Certificates come from trustme (tests/support/certs.py): the destination's
server certificate for 127.0.0.1 from one CA, ilm's client certificate from
the same CA; a second CA plays the wrong one. The move requester is dcmtk's
movescu or pynetdicom, every server runs on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelMove,
)

from conftest import write_config
from support.certs import Certs, make_certs
from support.retrieve_data import StoredStudy, make_study
from support.servers import free_port, stop_pid, wait_port
from test_dicom_gate import started  # noqa: F401  (the fixture: servers shut down after the test)
from test_dicom_retrieve import received

from ilm.config import DestinationSettings, DicomSettings, Settings, load_settings
from ilm.dicom.server import DicomServer, start_dicom_server
from ilm.errors import ConfigError
from ilm.service import ArchiveService

pytestmark = pytest.mark.dcmtk

AET = "ILMTLS"
DEST = "SECUREPACS"
SOURCES = ["CT_small.dcm", "MR_small.dcm"]


@pytest.fixture
def settings(home: Path, catalog_url: str) -> Settings:
    write_config(home, catalog_url)
    return load_settings(home=home, env={})


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA certificate that signed neither side's certificate."""
    return make_certs(tmp_path / "other").ca


class TlsStoreSCP:
    """dcmtk's storescp with TLS: its certificate from ``certs``, requiring a client certificate of that CA."""

    def __init__(self, folder: Path, certs: Certs) -> None:
        if shutil.which("storescp") is None:
            pytest.fail("dcmtk's storescp is missing: run 'make test', which installs the dcmtk package")
        self.port = free_port()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["storescp", "+tls", str(certs.key), str(certs.cert), "-rc", "+cf", str(certs.ca),
             "-aet", DEST, "+B", "-od", str(folder), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)  # type: ignore[arg-type]

    def received(self) -> dict[str, bytes]:
        return received(self.folder)


@pytest.fixture
def storescp(tmp_path: Path, certs: Certs) -> Iterator[TlsStoreSCP]:
    scp = TlsStoreSCP(tmp_path / "dest", certs)
    try:
        yield scp
    finally:
        stop_pid(scp.proc.pid)


@pytest.fixture
def study(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> StoredStudy:
    return make_study(service, [pydicom_test_files / n for n in SOURCES], tmp_path / "src", per_source=2)


def serve(service: ArchiveService, started: list[DicomServer], **destinations: DestinationSettings) -> DicomServer:
    srv = start_dicom_server(service, DicomSettings(ae_title=AET, host="127.0.0.1", port=0, destinations=destinations))
    started.append(srv)
    return srv


def secure(port: int, certs: Certs, ca: Path | None = None, **kw: str) -> DestinationSettings:
    return DestinationSettings(host="127.0.0.1", port=port, tls=True, tls_ca=str(ca or certs.ca),
                               tls_cert=str(certs.client_cert), tls_key=str(certs.client_key), **kw)


def movescu(scp: DicomServer, study: StoredStudy) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["movescu", "-d", "-aet", "MOVESCU", "-aec", AET, "-aem", DEST, "-S",
                           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}",
                           "127.0.0.1", str(scp.port)], capture_output=True, text=True, timeout=120)


def pynetdicom_move(scp: DicomServer, study: StoredStudy) -> list[Dataset]:
    ae = AE(ae_title="PYMOVE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study.study_uid
    try:
        return [status for status, _ in assoc.send_c_move(ident, DEST, StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()


def access_rows(service: ArchiveService) -> list[tuple[str, str]]:
    service.access.flush()
    with service.catalog.read() as c:
        return [tuple(r) for r in c.execute(sa.text("SELECT study_uid, interface FROM access_log")).all()]


# -- C-MOVE to a TLS destination ------------------------------------------------------------


def test_move_to_a_tls_destination_sends_every_instance_encrypted(
        service: ArchiveService, started: list[DicomServer], storescp: TlsStoreSCP, certs: Certs,
        study: StoredStudy) -> None:
    scp = serve(service, started, **{DEST: secure(storescp.port, certs)})
    r = movescu(scp, study)
    assert r.returncode == 0, r.stderr
    got = storescp.received()
    assert sorted(got) == sorted(study.sop_uids)
    for uid, blob in got.items():  # the very datasets stored (storescp +B writes them as received)
        assert pydicom.dcmread(DicomBytesIO(blob)) == pydicom.dcmread(DicomBytesIO(study.blobs[uid]))
    assert access_rows(service) == [(study.study_uid, "c-move")]


def test_a_destination_with_a_wrong_ca_fails_the_move_with_the_reason_and_sends_nothing(
        service: ArchiveService, started: list[DicomServer], storescp: TlsStoreSCP, certs: Certs, other_ca: Path,
        study: StoredStudy) -> None:
    scp = serve(service, started, **{DEST: secure(storescp.port, certs, ca=other_ca)})
    [status] = pynetdicom_move(scp, study)
    assert status.Status == 0xA702
    # the reason the handshake failed (dcmtk sends its CA along: "self-signed certificate in certificate chain")
    assert status.ErrorComment.startswith(f"TLS to {DEST}: ") and "certificate" in status.ErrorComment
    r = movescu(scp, study)  # what a PACS operator sees with dcmtk
    assert "Refused: OutOfResourcesSubOperations" in r.stderr and f"TLS to {DEST}: " in r.stderr, r.stderr
    assert storescp.received() == {}
    assert access_rows(service) == []  # nothing was sent: no access, no audit message


def test_the_certificate_must_name_the_destination(
        service: ArchiveService, started: list[DicomServer], storescp: TlsStoreSCP, certs: Certs,
        study: StoredStudy) -> None:
    scp = serve(service, started, **{DEST: secure(storescp.port, certs, tls_server_name="pacs.example.org")})
    [status] = pynetdicom_move(scp, study)
    assert status.Status == 0xA702 and "TLS to" in status.ErrorComment
    assert "Hostname mismatch" in status.ErrorComment or "not valid for" in status.ErrorComment
    assert storescp.received() == {}
    # the same name the certificate has (localhost) is accepted
    scp = serve(service, started, **{DEST: secure(storescp.port, certs, tls_server_name="localhost")})
    assert [s.Status for s in pynetdicom_move(scp, study)][-1] == 0x0000
    assert sorted(storescp.received()) == sorted(study.sop_uids)


def test_a_plain_destination_that_speaks_tls_is_a_clear_failure(
        service: ArchiveService, started: list[DicomServer], storescp: TlsStoreSCP, study: StoredStudy) -> None:
    scp = serve(service, started, **{DEST: DestinationSettings(host="127.0.0.1", port=storescp.port)})
    [status] = pynetdicom_move(scp, study)
    assert status.Status == 0xA702
    assert status.ErrorComment == f"Cannot associate with {DEST} at 127.0.0.1:{storescp.port}"
    assert storescp.received() == {}


def test_destination_tls_settings_are_checked(service: ArchiveService, started: list[DicomServer],
                                              certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need tls = true"):
        DestinationSettings(host="127.0.0.1", port=104, tls_ca=str(certs.ca))
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        DestinationSettings(host="127.0.0.1", port=104, tls=True, tls_cert=str(certs.client_cert))
    with pytest.raises(ConfigError, match=rf"key 'dicom.destinations.{DEST}.tls_ca': .*nope.pem: no such file"):
        serve(service, started, **{DEST: secure(104, certs, ca=tmp_path / "nope.pem")})
    bad = DestinationSettings(host="127.0.0.1", port=104, tls=True, tls_ca=str(certs.ca),
                              tls_cert=str(certs.client_cert), tls_key=str(certs.key))  # the key of another certificate
    with pytest.raises(ConfigError, match=rf"dicom.destinations.{DEST}.tls_cert"):
        serve(service, started, **{DEST: bad})
    assert started == []  # nothing listens with a bad file


def test_destination_tls_in_ilm_toml(home: Path, certs: Certs) -> None:
    write_config(home, f"sqlite:///{home / 'c.sqlite'}", f"""
[dicom.destinations.{DEST}]
host = "127.0.0.1"
port = 2762
tls = true
tls_ca = "{certs.ca}"
""")
    d = load_settings(home=home, env={}).dicom.destinations[DEST]
    assert (d.tls, d.tls_ca, d.tls_cert) == (True, str(certs.ca), "")
    write_config(home, f"sqlite:///{home / 'c.sqlite'}", f"""
[dicom.destinations.{DEST}]
host = "127.0.0.1"
port = 2762
tls_ca = "{certs.ca}"
""")
    with pytest.raises(ConfigError, match="need tls = true"):
        load_settings(home=home, env={})


# -- Storage Commitment report on a new association, over TLS --------------------------------


def _listener(port: int, certs: Certs, reports: list[Dataset], got: threading.Event) -> object:
    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append(event.event_information)
        got.set()
        return 0x0000, None

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.cert), str(certs.key))
    ctx.verify_mode = ssl.CERT_REQUIRED  # ilm must present its client certificate
    ae = AE(ae_title=DEST)
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    return ae.start_server(("127.0.0.1", port), block=False, ssl_context=ctx,
                           evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])


def _request_commitment(scp: DicomServer, study: StoredStudy) -> list[tuple[str, str]]:
    pairs = [(study.sop_classes[u], u) for u in study.sop_uids]
    info = Dataset()
    info.TransactionUID = generate_uid()
    info.ReferencedSOPSequence = []
    for cls, uid in pairs:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, uid
        info.ReferencedSOPSequence.append(item)
    ae = AE(ae_title=DEST)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET)
    assert assoc.is_established
    status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    assoc.release()  # the report must come on a new association
    assert status.Status == 0x0000
    return pairs


@pytest.mark.parametrize("catalog_url", ["sqlite"], indirect=True)
def test_storage_commitment_report_over_tls(service: ArchiveService, started: list[DicomServer], certs: Certs,
                                            other_ca: Path, study: StoredStudy,
                                            caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    reports: list[Dataset] = []
    got = threading.Event()
    listener = _listener(port, certs, reports, got)
    try:
        scp = serve(service, started, **{DEST: secure(port, certs)})
        pairs = _request_commitment(scp, study)
        assert got.wait(30), "no N-EVENT-REPORT over TLS"
        [report] = reports
        assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in report.ReferencedSOPSequence] == pairs
        # with a wrong CA, ilm refuses the listener's certificate: no report, the reason logged
        got.clear()
        wrong = serve(service, started, **{DEST: secure(port, certs, ca=other_ca)})
        with caplog.at_level("ERROR", logger="ilm.dicom.commitment"):
            _request_commitment(wrong, study)
            deadline = threading.Event()
            for _ in range(300):
                if any("TLS handshake failed" in r.getMessage() for r in caplog.records):
                    break
                deadline.wait(0.1)
        assert any("TLS handshake failed: " in r.getMessage() and "certificate" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert len(reports) == 1
    finally:
        listener.shutdown()  # type: ignore[attr-defined]
