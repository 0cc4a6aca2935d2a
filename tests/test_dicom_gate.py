"""Who may talk DICOM to ilm: allowed calling AE titles and hosts, and DICOM over TLS,
checked with dcmtk's echoscu/storescu (and pynetdicom as a TLS client).

The checks happen before the catalog is involved, so these tests run on the
SQLite catalog only.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from conftest import write_config
from support.certs import Certs, make_certs

from ilm.config import DicomSettings, load_settings
from ilm.dicom.gate import refusal
from ilm.dicom.server import DicomServer, start_dicom_server
from ilm.errors import ConfigError
from ilm.service import ArchiveService

pytestmark = pytest.mark.dcmtk

AET = "ILMGATE"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ArchiveService]:
    if shutil.which("echoscu") is None or shutil.which("storescu") is None:
        pytest.fail("dcmtk's echoscu/storescu are missing: run 'make test', which installs the dcmtk package")
    home = tmp_path / "home"
    write_config(home, f"sqlite:///{home / 'catalog.sqlite'}")
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def serve(service: ArchiveService, **settings: object) -> DicomServer:
    return start_dicom_server(service, DicomSettings(ae_title=AET, host="127.0.0.1", port=0, **settings))  # type: ignore[arg-type]


@pytest.fixture
def started() -> Iterator[list[DicomServer]]:
    servers: list[DicomServer] = []
    yield servers
    for s in servers:
        s.shutdown(grace=2)


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def echo(scp: DicomServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run("echoscu", "-aec", AET, "-to", "60", "-ta", "60", "-td", "60", *args, "127.0.0.1", str(scp.port))


def instance_count(service: ArchiveService) -> int:
    with service.catalog.read() as c:
        return int(c.execute(sa.text("SELECT count(*) FROM instances")).scalar_one())


# -- allowed calling AE titles and hosts ---------------------------------------------------


@pytest.mark.parametrize("aets, hosts, calling, host, refused", [
    ([], [], "ANY", "192.0.2.7", None),
    (["PACS", "CT1"], [], "CT1", "192.0.2.7", None),
    (["PACS", "CT1"], [], "MR1", "192.0.2.7", "calling AE title 'MR1' is not in dicom.allowed_calling_aets"),
    ([], ["10.0.0.0/8", "192.0.2.7"], "ANY", "192.0.2.7", None),
    ([], ["10.0.0.0/8"], "ANY", "10.200.1.1", None),
    ([], ["10.0.0.0/8"], "ANY", "::ffff:10.1.2.3", None),  # IPv4 on a dual-stack socket
    ([], ["10.0.0.0/8"], "ANY", "192.0.2.7", "address 192.0.2.7 is not in dicom.allowed_hosts"),
    (["CT1"], ["10.0.0.0/8"], "CT1", "192.0.2.7", "address 192.0.2.7 is not in dicom.allowed_hosts"),
    (["CT1"], ["10.0.0.0/8"], "CT1 ", "10.0.0.1", None),  # AE titles are space-padded on the wire
])
def test_refusal(aets: list[str], hosts: list[str], calling: str, host: str, refused: str | None) -> None:
    assert refusal(DicomSettings(allowed_calling_aets=aets, allowed_hosts=hosts), calling, host) == refused


def test_other_calling_ae_title_is_rejected(service: ArchiveService, started: list[DicomServer],
                                            pydicom_test_files: Path) -> None:
    scp = serve(service, allowed_calling_aets=["MODALITY", "PACS"])
    started.append(scp)
    wrong = echo(scp, "-aet", "WRONG")
    assert wrong.returncode != 0
    assert "Rejected Permanent" in wrong.stderr and "Calling AE Title Not Recognized" in wrong.stderr, wrong.stderr
    store = run("storescu", "-aet", "WRONG", "-aec", AET, "127.0.0.1", str(scp.port),
                str(pydicom_test_files / "CT_small.dcm"))
    assert store.returncode != 0 and "Calling AE Title Not Recognized" in store.stderr
    assert instance_count(service) == 0  # nothing stored
    assert echo(scp, "-aet", "PACS").returncode == 0  # the control: an allowed AE title, same server
    assert run("storescu", "-aet", "MODALITY", "-aec", AET, "127.0.0.1", str(scp.port),
               str(pydicom_test_files / "CT_small.dcm")).returncode == 0
    assert instance_count(service) == 1


def test_other_host_is_rejected(service: ArchiveService, started: list[DicomServer]) -> None:
    elsewhere = serve(service, allowed_hosts=["10.0.0.0/8", "192.0.2.7"])
    here = serve(service, allowed_hosts=["10.0.0.0/8", "127.0.0.0/8"])
    started += [elsewhere, here]
    refused = echo(elsewhere, "-aet", "ANY")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr, refused.stderr
    assert echo(here, "-aet", "ANY").returncode == 0


def test_bad_access_settings_are_config_errors(home: Path) -> None:
    for body, problem in (('allowed_hosts = ["pacs.example"]', "not an IP address or network"),
                          ('allowed_calling_aets = ["A\\\\B"]', "AE title"),
                          ('tls_cert = "a.pem"', "tls_cert and tls_key go together"),
                          ('tls_ca = "ca.pem"', "tls_ca (client certificates) needs tls_cert")):
        write_config(home, "sqlite:///x.sqlite", extra=f"[dicom]\n{body}\n")
        with pytest.raises(ConfigError, match=r"key 'dicom.*': .*" + problem.replace("(", r"\(").replace(")", r"\)")):
            load_settings(home=home, env={})


# -- TLS ------------------------------------------------------------------------------------


def test_tls_echo_with_dcmtk_and_a_plain_client_fails(service: ArchiveService, started: list[DicomServer],
                                                      certs: Certs, pydicom_test_files: Path) -> None:
    scp = serve(service, tls_cert=str(certs.cert), tls_key=str(certs.key))
    started.append(scp)
    ok = echo(scp, "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca))
    assert ok.returncode == 0, ok.stderr
    assert echo(scp, "+tla", "+cf", str(certs.ca)).returncode == 0  # no client certificate needed without tls_ca
    plain = echo(scp)
    assert plain.returncode != 0
    store = run("storescu", "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca),
                "-aec", AET, "127.0.0.1", str(scp.port), str(pydicom_test_files / "CT_small.dcm"))
    assert store.returncode == 0, store.stderr
    assert instance_count(service) == 1


def test_tls_with_client_certificates(service: ArchiveService, started: list[DicomServer], certs: Certs,
                                      tmp_path: Path) -> None:
    scp = serve(service, tls_cert=str(certs.cert), tls_key=str(certs.key), tls_ca=str(certs.ca))
    started.append(scp)
    assert echo(scp, "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca)).returncode == 0
    assert echo(scp, "+tla", "+cf", str(certs.ca)).returncode != 0  # no client certificate
    stranger = make_certs(tmp_path / "stranger")  # a certificate from another CA
    assert echo(scp, "+tls", str(stranger.client_key), str(stranger.client_cert), "+cf", str(certs.ca)).returncode != 0

    # pynetdicom as the client, with Python's ssl
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AET, tls_args=(ctx, "127.0.0.1"))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_a_silent_client_does_not_hold_up_tls_associations(service: ArchiveService, started: list[DicomServer],
                                                          certs: Certs) -> None:
    """The handshake runs in the association's thread: a connection that never speaks blocks no one else."""
    scp = serve(service, tls_cert=str(certs.cert), tls_key=str(certs.key))
    started.append(scp)
    with socket.create_connection(("127.0.0.1", scp.port)):  # connects, never sends a ClientHello
        ok = echo(scp, "+tla", "+cf", str(certs.ca))
        assert ok.returncode == 0, ok.stderr


def test_missing_or_bad_certificate_files_are_config_errors(service: ArchiveService, certs: Certs,
                                                            tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"key 'dicom.tls_key': .*nope.key: no such file"):
        serve(service, tls_cert=str(certs.cert), tls_key=str(tmp_path / "nope.key"))
    with pytest.raises(ConfigError, match="not a PEM certificate and its private key"):
        serve(service, tls_cert=str(certs.cert), tls_key=str(certs.client_key))  # a key of another certificate
    with pytest.raises(ConfigError, match=r"key 'dicom.tls_ca': .*server.key: not a PEM CA certificate"):
        serve(service, tls_cert=str(certs.cert), tls_key=str(certs.key), tls_ca=str(certs.key))
