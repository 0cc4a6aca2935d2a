"""DICOM audit messages (PS3.15 A.5, IHE ATNA) for real operations, parsed as a receiver sees them.

A syslog receiver written in the test (tests/support/syslog_receiver.py)
listens on 127.0.0.1; ilm sends to it over TCP (and TLS with certificates
from trustme). Each test drives a real operation (dcmtk's storescu and
findscu, a WADO-RS read over HTTP, an expiry by ``ilm apply``) and checks
the RFC 6587 framing, the RFC 5424 header and the AuditMessage XML: event
codes, participants, the study and patient objects.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pydicom
import pytest
from hypothesis import example, given, settings as hypothesis_settings, strategies as st
import trustme
from typer.testing import CliRunner

from conftest import write_config
from support.http import serve
from support.servers import free_port, wait_port
from support.syslog_receiver import SyslogReceiver, Syslog5424, parse, read_frames, wait_for

from ilm.atna import messages as m
from ilm.atna.syslog import octet_frame, rfc5424
from ilm.cli import app
from ilm.config import DicomSettings, Settings, load_settings
from ilm.dicom.server import DicomServer, start_dicom_server
from ilm.errors import ConfigError
from ilm.service import ArchiveService
from ilm.web import create_app

AET = "ILMAUDIT"
runner = CliRunner()
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _codes(root: ET.Element, path: str) -> list[str]:
    return [e.get("csd-code", "") for e in root.findall(path)]


def _objects(root: ET.Element, type_code: str, role: str) -> list[ET.Element]:
    return [o for o in root.findall("ParticipantObjectIdentification")
            if o.get("ParticipantObjectTypeCode") == type_code and o.get("ParticipantObjectTypeCodeRole") == role]


def _study_ids(root: ET.Element) -> list[str]:
    objs = _objects(root, "2", "3")
    assert all(_codes(o, "ParticipantObjectIDTypeCode") == ["110180"] for o in objs)
    return [o.get("ParticipantObjectID", "") for o in objs]


def _patient_ids(root: ET.Element) -> list[str]:
    objs = _objects(root, "1", "1")
    assert all(_codes(o, "ParticipantObjectIDTypeCode") == ["2"] for o in objs)
    return [o.get("ParticipantObjectID", "") for o in objs]


def _event(rec: Syslog5424) -> str:
    codes = _codes(rec.xml, "EventIdentification/EventID")
    assert len(codes) == 1
    return codes[0]


def _of(receiver: SyslogReceiver, code: str) -> list[Syslog5424]:
    return [r for r in receiver.parsed() if _event(r) == code]


# -- the message and its framing, without a network --------------------------------------------


def test_import_message_has_the_parts_ps3_15_a5_asks_for() -> None:
    archive = m.Participant("ilm", alternative_user_id="AETITLES=ILM", address="pacs.example")
    sender = m.Participant("MODALITY", alternative_user_id="AETITLES=MODALITY", address="10.0.0.7")
    study = m.StudyObject("1.2.3.4", "P-1", "HOSP", "Doe^Jane <&> \"x\"\nnext", "ACC1",
                          (("1.2.840.10008.5.1.4.1.1.2", 3),))
    xml = m.to_xml(m.instances_imported(NOW, archive, sender, study, failed=1), m.AuditSource("ILM", "SITE"))
    assert b"\n" not in xml  # one record per line in a log file
    root = ET.fromstring(xml)
    assert root.tag == "AuditMessage"
    assert [c.tag for c in root] == ["EventIdentification", "ActiveParticipant", "ActiveParticipant",
                                     "AuditSourceIdentification", "ParticipantObjectIdentification",
                                     "ParticipantObjectIdentification"]  # the schema's order
    ident = root.find("EventIdentification")
    assert ident is not None
    assert (ident.get("EventActionCode"), ident.get("EventDateTime"), ident.get("EventOutcomeIndicator")) == \
        ("C", "2026-03-01T12:00:00.000Z", "4")
    event_id = ident.find("EventID")
    assert event_id is not None and event_id.attrib == {"csd-code": "110107", "codeSystemName": "DCM",
                                                        "originalText": "Import"}
    src, dst = root.findall("ActiveParticipant")
    assert (src.get("UserID"), src.get("UserIsRequestor"), src.get("NetworkAccessPointID"),
            src.get("NetworkAccessPointTypeCode")) == ("MODALITY", "true", "10.0.0.7", "2")
    assert _codes(src, "RoleIDCode") == ["110153"] and _codes(dst, "RoleIDCode") == ["110152"]
    assert (dst.get("UserIsRequestor"), dst.get("NetworkAccessPointTypeCode")) == ("false", "1")
    source = root.find("AuditSourceIdentification")
    assert source is not None and (source.get("AuditSourceID"), source.get("AuditEnterpriseSiteID")) == ("ILM", "SITE")
    assert _study_ids(root) == ["1.2.3.4"]
    sop = root.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
    assert sop is not None and sop.attrib == {"UID": "1.2.840.10008.5.1.4.1.1.2", "NumberOfInstances": "3"}
    assert _patient_ids(root) == ["P-1^^^HOSP"]
    name = _objects(root, "1", "1")[0].find("ParticipantObjectName")
    assert name is not None and name.text == 'Doe^Jane <&> "x" next'  # escaped, control characters blanked


@hypothesis_settings(max_examples=300, deadline=None)
@example(name="Doe\uffff^Jane", patient="P\ud800", user="AE\x00\n", query=b"\x00")  # not XML 1.0 characters
@given(name=st.text(), patient=st.text(), user=st.text(), query=st.binary())
def test_any_text_makes_a_well_formed_one_line_message(name: str, patient: str, user: str, query: bytes) -> None:
    """Patient names and IDs come from any DICOM file, user names from any peer: the message
    is always well-formed XML on one line, and framing counts its bytes."""
    study = m.StudyObject("1.2.3", patient, "", name, "", (("1.2.840.10008.5.1.4.1.1.2", 1),))
    for ev in (m.instances_imported(NOW, m.Participant("ilm"), m.Participant(user, address=user), study),
               m.query(NOW, m.Participant("ilm"), m.Participant(user), m.QueryObject("1.2", query))):
        record = rfc5424(m.to_xml(ev, m.AuditSource(user)), at=NOW, hostname=user, app_name=user, procid=user)
        assert b"\n" not in record and b"\r" not in record
        frames, rest = read_frames(octet_frame(record))
        assert frames == [record] and rest == b""
        root = parse(record).xml
        if ev.query is not None:
            q = root.findtext("ParticipantObjectIdentification/ParticipantObjectQuery") or ""
            assert base64.b64decode(q) == query
        else:
            assert _study_ids(root) == ["1.2.3"]


def test_rfc5424_header_and_octet_counting() -> None:
    body = "<AuditMessage>é</AuditMessage>".encode()
    msg = rfc5424(body, at=NOW, hostname="host name", app_name="ilm", procid="42")
    assert msg.startswith(b"<85>1 2026-03-01T12:00:00.000Z hostname ilm 42 IHE+RFC-3881 - \xef\xbb\xbf<AuditMessage>")
    framed = octet_frame(msg) + octet_frame(msg)
    frames, rest = read_frames(framed)
    assert frames == [msg, msg] and rest == b""
    assert int(framed.split(b" ", 1)[0]) == len(msg)  # the count is in bytes, not characters
    assert parse(msg).xml.text == "é"


def test_trail_entries_map_to_study_deleted_or_nothing() -> None:
    from ilm.audit import AuditEntry

    archive = m.Participant("ilm")
    expire = AuditEntry(NOW, "dr-admin", "study.expire", "1.2.3", plan_id="p1", rule_id="old", id=7, hash="ab" * 32)
    ev = m.from_audit_entry(expire, m.StudyObject("1.2.3", "P7"), archive)
    assert ev is not None and ev.event_id.code == "110105" and ev.action == "D"
    root = ET.fromstring(m.to_xml(ev, m.AuditSource("ILM")))
    actor = root.find("ActiveParticipant")
    assert actor is not None and (actor.get("UserID"), actor.get("UserIsRequestor")) == ("dr-admin", "true")
    details = {d.get("type"): base64.b64decode(d.get("value", "")).decode()
               for d in root.findall("ParticipantObjectIdentification/ParticipantObjectDetail")}
    assert details == {"ilm-phase": "quarantined", "ilm-audit-id": "7", "ilm-audit-hash": "ab" * 32,
                       "ilm-plan": "p1", "ilm-rule": "old"}
    assert m.from_audit_entry(AuditEntry(NOW, "x", "hold.add", "1.2.3"), None, archive) is None
    assert m.from_audit_entry(AuditEntry(NOW, "x", "plan.create"), None, archive) is None


@pytest.mark.parametrize("extra, key", [
    ('syslog_host = "127.0.0.1"\nsyslog_cert = "c.pem"\nsyslog_tls = true', "audit"),
    ('syslog_host = "127.0.0.1"\nsyslog_ca = "ca.pem"', "audit"),
    ('syslog_port = 0', "audit.syslog_port"),
    ('app_name = "my app"', "audit.app_name"),
    ('sylog_host = "x"', "audit.sylog_host"),
], ids=["cert-without-key", "ca-without-tls", "port-0", "space-in-app-name", "misspelt-key"])
def test_bad_audit_config_is_refused_naming_the_key(tmp_path: Path, extra: str, key: str) -> None:
    write_config(tmp_path, "sqlite:///x.sqlite", f"\n[audit]\n{extra}\n")
    with pytest.raises(ConfigError, match=f"key '{key}"):
        load_settings(home=tmp_path, env={})
    r = runner.invoke(app, ["audit", "--home", str(tmp_path)])
    assert r.exit_code == 2 and key in r.output


def test_missing_tls_files_are_a_config_error(tmp_path: Path) -> None:
    write_config(tmp_path, "sqlite:///x.sqlite", _audit_config(6514, 'syslog_tls = true\nsyslog_ca = "nowhere.pem"'))
    r = runner.invoke(app, ["audit", "--home", str(tmp_path)])
    assert r.exit_code == 2 and "audit.syslog_ca" in r.output and "nowhere.pem" in r.output
    assert not (tmp_path / "audit-spool.log").exists()


# -- real operations against a receiver on loopback ----------------------------------------------


@pytest.fixture
def receiver() -> Iterator[SyslogReceiver]:
    r = SyslogReceiver().start()
    try:
        yield r
    finally:
        r.stop()


def _audit_config(port: int, extra: str = "") -> str:
    return (f'\n[audit]\nfile = "audit/audit.log"\nsyslog_host = "127.0.0.1"\nsyslog_port = {port}\n'
            f'retry_seconds = 0.2\nsource_id = "ILM-TEST"\n{extra}\n')


@pytest.fixture
def settings(home: Path, catalog_url: str, receiver: SyslogReceiver) -> Settings:
    write_config(home, catalog_url, _audit_config(receiver.port))
    return load_settings(home=home, env={})


@pytest.fixture
def scp(service: ArchiveService) -> Iterator[DicomServer]:
    if shutil.which("storescu") is None:
        pytest.fail("dcmtk is missing: run 'make test', which installs the dcmtk package")
    srv = start_dicom_server(service, DicomSettings(ae_title=AET, host="127.0.0.1", port=0))
    try:
        yield srv
    finally:
        srv.shutdown(grace=2)


def _files(pydicom_test_files: Path, folder: Path, studies: dict[str, tuple[str, int]]) -> list[Path]:
    """``count`` copies of CT_small.dcm per study: study UID -> (patient ID, count)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s, (patient, count) in studies.items():
        for i in range(count):
            ds = pydicom.dcmread(pydicom_test_files / "CT_small.dcm")
            ds.StudyInstanceUID, ds.SeriesInstanceUID = s, f"{s}.1"
            ds.SOPInstanceUID = f"{s}.1.{i + 1}"
            ds.PatientID = patient
            ds.StudyDate = "20090101"
            ds.PatientBirthDate = "19500101"
            path = folder / f"{s}-{i}.dcm"
            ds.save_as(path)
            out.append(path)
    return out


STUDY_A, STUDY_B = "1.2.826.0.1.3680043.10.901", "1.2.826.0.1.3680043.10.902"


def test_storescu_import_is_one_message_per_study_per_association(
        scp: DicomServer, service: ArchiveService, receiver: SyslogReceiver, pydicom_test_files: Path,
        tmp_path: Path) -> None:
    files = _files(pydicom_test_files, tmp_path / "in", {STUDY_A: ("PAT-A", 3), STUDY_B: ("PAT-B", 1)})
    r = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", AET, "127.0.0.1", str(scp.port), *map(str, files)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    imports = wait_for(lambda: len(_of(receiver, "110107")) >= 2 and _of(receiver, "110107"), what="2 imports")
    service.atna.flush()
    assert len(_of(receiver, "110107")) == 2  # one per study, not one per instance
    by_study = {_study_ids(rec.xml)[0]: rec for rec in imports}
    assert set(by_study) == {STUDY_A, STUDY_B}
    a = by_study[STUDY_A]
    assert (a.pri, a.msgid, a.app_name, a.bom) == (85, "IHE+RFC-3881", "ilm", True)
    assert _patient_ids(a.xml) == ["PAT-A"]
    assert _patient_ids(by_study[STUDY_B].xml) == ["PAT-B"]
    sop = a.xml.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
    assert sop is not None and sop.get("NumberOfInstances") == "3"
    sender = [p for p in a.xml.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert [(p.get("UserID"), p.get("NetworkAccessPointID")) for p in sender] == [("MODALITY", "127.0.0.1")]
    assert a.xml.find("AuditSourceIdentification").get("AuditSourceID") == "ILM-TEST"  # type: ignore[union-attr]
    # the file sink holds the same records, one per line
    lines = (service.settings.home / "audit" / "audit.log").read_bytes().splitlines()
    assert sorted(_study_ids(parse(x).xml)[0] for x in lines if _event(parse(x)) == "110107") == [STUDY_A, STUDY_B]


def test_findscu_query_is_audited_with_the_identifier(
        scp: DicomServer, service: ArchiveService, receiver: SyslogReceiver, pydicom_test_files: Path,
        tmp_path: Path) -> None:
    service.import_paths(_files(pydicom_test_files, tmp_path / "in", {STUDY_A: ("PAT-A", 1)}))
    r = subprocess.run(["findscu", "-aet", "VIEWER", "-aec", AET, "-S", "-k", "QueryRetrieveLevel=STUDY",
                        "-k", "PatientID=PAT-A", "-k", "StudyInstanceUID", "127.0.0.1", str(scp.port)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (rec,) = wait_for(lambda: _of(receiver, "110112"), what="a query message")
    obj = rec.xml.find("ParticipantObjectIdentification")
    assert obj is not None and obj.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root FIND
    assert _codes(obj, "ParticipantObjectIDTypeCode") == ["110181"]
    query_el = obj.find("ParticipantObjectQuery")
    assert query_el is not None and query_el.text
    ts = obj.find("ParticipantObjectDetail")
    assert ts is not None and ts.get("type") == "TransferSyntax"
    ident = pydicom.dcmread(io.BytesIO(base64.b64decode(query_el.text)), force=True)  # the identifier as sent
    ident.file_meta = pydicom.dataset.FileMetaDataset()
    ident.file_meta.TransferSyntaxUID = base64.b64decode(ts.get("value", "")).decode()
    assert ident.PatientID == "PAT-A" and ident.QueryRetrieveLevel == "STUDY"
    requestor = [p for p in rec.xml.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert [p.get("UserID") for p in requestor] == ["VIEWER"]
    # the import of the same test was audited too, by the login running it
    (imp,) = wait_for(lambda: _of(receiver, "110107"), what="the import message")
    assert _study_ids(imp.xml) == [STUDY_A]
    # a query that cannot run is audited as a minor failure, with the reason
    subprocess.run(["findscu", "-aet", "VIEWER", "-aec", AET, "-S", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", "StudyDate=2020*", "127.0.0.1", str(scp.port)], capture_output=True, text=True, timeout=120)

    def failures() -> list[Syslog5424]:
        return [x for x in _of(receiver, "110112")
                if x.xml.findtext("EventIdentification/EventOutcomeDescription") is not None]

    failed = wait_for(failures, what="the failed query")
    assert failed[0].xml.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    assert "StudyDate" in (failed[0].xml.findtext("EventIdentification/EventOutcomeDescription") or "")


def test_wado_read_is_instances_transferred(service: ArchiveService, receiver: SyslogReceiver,
                                            pydicom_test_files: Path, tmp_path: Path) -> None:
    service.import_paths(_files(pydicom_test_files, tmp_path / "in", {STUDY_A: ("PAT-A", 2)}))
    with serve(create_app(service, auth=False)) as base:
        r = httpx.get(f"{base}/dicomweb/studies/{STUDY_A}", timeout=60,
                      headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert r.status_code == 200
        q = httpx.get(f"{base}/dicomweb/studies?PatientID=PAT-A", timeout=60)
        assert q.status_code == 200
        meta = httpx.get(f"{base}/dicomweb/studies/{STUDY_A}/metadata", timeout=60)
        assert meta.status_code == 200
    (rec,) = wait_for(lambda: _of(receiver, "110104"), what="an instances-transferred message")
    assert rec.xml.find("EventIdentification").get("EventActionCode") == "R"  # type: ignore[union-attr]
    assert _study_ids(rec.xml) == [STUDY_A] and _patient_ids(rec.xml) == ["PAT-A"]
    roles = {p.get("UserID"): _codes(p, "RoleIDCode") for p in rec.xml.findall("ActiveParticipant")}
    assert roles["127.0.0.1"] == ["110152"] and roles["ilm"] == ["110153"]  # the reader receives, ilm sends
    sop = rec.xml.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
    assert sop is not None and sop.get("NumberOfInstances") == "2"
    (accessed,) = wait_for(lambda: _of(receiver, "110103"), what="the metadata read")  # attributes, not instances
    assert accessed.xml.find("EventIdentification").get("EventActionCode") == "R"  # type: ignore[union-attr]
    assert _study_ids(accessed.xml) == [STUDY_A] and _patient_ids(accessed.xml) == ["PAT-A"]
    (query,) = wait_for(lambda: _of(receiver, "110112"), what="the QIDO-RS query message")
    text = query.xml.find("ParticipantObjectIdentification/ParticipantObjectQuery").text  # type: ignore[union-attr]
    assert base64.b64decode(text or "") == b"/dicomweb/studies?PatientID=PAT-A"


POLICY = """
name: audit-test
rules:
  - id: old-expire
    when:
      study_age: {older_than: P10Y}
    action: expire
"""


def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    r = runner.invoke(app, [*args, "--home", str(settings.home)])
    return r.exit_code, r.output


def test_expire_by_ilm_apply_is_study_deleted_and_the_trail_exports(
        settings: Settings, receiver: SyslogReceiver, pydicom_test_files: Path, tmp_path: Path) -> None:
    _files(pydicom_test_files, tmp_path / "in", {STUDY_A: ("PAT-A", 2)})
    assert _cli(settings, "import", str(tmp_path / "in"))[0] == 0
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY)
    later = (date.today() + timedelta(days=60)).isoformat()  # past the recently-accessed protection
    code, out = _cli(settings, "plan", "--policy", str(pol), "--as-of", later, "--json")
    assert code == 0, out
    plan_id = json.loads(out)["plan_id"]
    code, out = _cli(settings, "apply", plan_id, "--approved-by", "dr-admin")
    assert code == 0 and "1 done" in out, out
    # the CLI process sent it before it ended: no server was running
    (rec,) = wait_for(lambda: _of(receiver, "110105"), what="a study-deleted message")
    ident = rec.xml.find("EventIdentification")
    assert ident is not None and ident.get("EventActionCode") == "D" and ident.get("EventOutcomeIndicator") == "0"
    assert _study_ids(rec.xml) == [STUDY_A] and _patient_ids(rec.xml) == ["PAT-A"]
    actor = [p for p in rec.xml.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert [p.get("UserID") for p in actor] == ["dr-admin"]
    assert len(_of(receiver, "110107")) == 1  # the import run: one study, one message

    # the whole trail as a file, with the same message for the expiry
    out_file = tmp_path / "export" / "atna.log"
    code, out = _cli(settings, "audit", "export", "--since", date.today().isoformat(), "--format", "atna",
                     "--to", str(out_file))
    assert code == 0, out
    records = [parse(line) for line in out_file.read_bytes().splitlines()]
    assert [(_event(r), _study_ids(r.xml)) for r in records] == [("110105", [STUDY_A])]
    out = " ".join(out.split())  # the console folds long lines
    assert "1 audit messages written" in out and "plan.create 1" in out and "plan.apply 1" in out  # counted
    code, out = _cli(settings, "audit", "export", "--since", "2999-01-01", "--to", str(out_file))
    assert code == 0 and out_file.read_bytes() == b""
    assert _cli(settings, "audit", "export", "--since", "yesterday", "--to", str(out_file))[0] == 2
    assert _cli(settings, "audit", "export", "--format", "xml", "--to", str(out_file))[0] == 2
    assert _cli(settings, "audit", "--verify")[0] == 0  # the old command still works beside the group


def test_receiver_down_spools_never_blocks_and_resends_in_order(
        home: Path, catalog_url: str, pydicom_test_files: Path, tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet
    write_config(home, catalog_url, _audit_config(port))
    service = ArchiveService.open(load_settings(home=home, env={}))
    receiver = SyslogReceiver()
    try:
        report = service.import_paths(_files(pydicom_test_files, tmp_path / "in", {STUDY_A: ("PAT-A", 1)}))
        assert report.stored == 1  # the import does not wait for, nor fail on, the receiver
        report = service.import_paths(_files(pydicom_test_files, tmp_path / "in2", {STUDY_B: ("PAT-B", 1)}))
        assert report.stored == 1
        spool = home / "audit-spool.log"
        wait_for(lambda: spool.exists() and len(spool.read_bytes().splitlines()) == 2, what="2 spooled messages")
        receiver.start(port)
        got = wait_for(lambda: len(receiver.messages) >= 2 and receiver.parsed(), what="the spooled messages")
        assert [_study_ids(r.xml) for r in got] == [[STUDY_A], [STUDY_B]]  # in the order they happened
        wait_for(lambda: spool.read_bytes() == b"", what="an empty spool")
    finally:
        service.close()
        receiver.stop()


def test_tls_receiver_and_a_wrong_ca(home: Path, catalog_url: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    home.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(home / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(home / "other-ca.pem"))
    receiver = SyslogReceiver(tls=server_ctx).start()
    try:
        write_config(home, catalog_url, _audit_config(receiver.port, 'syslog_tls = true\nsyslog_ca = "ca.pem"'))
        service = ArchiveService.open(load_settings(home=home, env={}))
        try:
            service.atna.application(started=True, launcher="operator")
            wait_for(lambda: receiver.messages, what="a message over TLS")
            service.atna.application(started=False, launcher="operator")
            wait_for(lambda: len(receiver.messages) == 2, what="a second message")
        finally:
            service.close()
        assert receiver.connections == 1  # one connection kept open for both (TLS 1.3 session tickets included)
        rec = receiver.parsed()[0]
        assert _event(rec) == "110100"
        assert _codes(rec.xml, "EventIdentification/EventTypeCode") == ["110120"]  # Application Start
        people = {p.get("UserID"): (_codes(p, "RoleIDCode"), p.get("UserIsRequestor"))
                  for p in rec.xml.findall("ActiveParticipant")}
        assert people == {"ilm": (["110150"], "false"), "operator": (["110151"], "true")}

        # a receiver whose certificate our CA did not sign gets nothing: the message waits in the spool
        write_config(home, catalog_url, _audit_config(receiver.port, 'syslog_tls = true\nsyslog_ca = "other-ca.pem"'))
        service = ArchiveService.open(load_settings(home=home, env={}))
        try:
            service.atna.application(started=False)
            wait_for(lambda: (home / "audit-spool.log").exists() and (home / "audit-spool.log").read_bytes(),
                     what="the spooled message")
        finally:
            service.close()
        assert len(receiver.messages) == 2
    finally:
        receiver.stop()


def test_ilm_serve_start_stop_and_a_cstore_while_the_receiver_is_down(
        tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    if shutil.which("storescu") is None:
        pytest.fail("dcmtk is missing: run 'make test', which installs the dcmtk package")
    port = free_port()  # the receiver is down at first
    home = tmp_path / "home"
    write_config(home, catalog_url, _audit_config(port))
    dicom = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ILM_")}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ilm", "serve", "--home", str(home), "--host", "127.0.0.1",
                                 "--dicom-port", str(dicom), "--http-port", str(free_port()), "--ae-title", AET],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    receiver = SyslogReceiver()
    try:
        wait_port(dicom, timeout=60, proc=proc)
        files = _files(pydicom_test_files, tmp_path / "in", {STUDY_A: ("PAT-A", 2)})
        r = subprocess.run(["storescu", "-aet", "MODALITY", "-aec", AET, "127.0.0.1", str(dicom), *map(str, files)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr  # stored and acknowledged although no receiver listens
        wait_for(lambda: (home / "audit-spool.log").exists() and len(
            (home / "audit-spool.log").read_bytes().splitlines()) >= 2, what="start and import spooled")
        receiver.start(port)
        wait_for(lambda: _of(receiver, "110107"), what="the spooled import, sent once the receiver is up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text(errors="replace")
        wait_for(lambda: len(_of(receiver, "110100")) == 2, what="application start and stop")
        events = [(_event(x), _codes(x.xml, "EventIdentification/EventTypeCode")) for x in receiver.parsed()]
        assert events == [("110100", ["110120"]), ("110107", []), ("110100", ["110121"])]  # in order
        (imp,) = _of(receiver, "110107")
        assert _study_ids(imp.xml) == [STUDY_A] and _patient_ids(imp.xml) == ["PAT-A"]
        app_ids = {p.get("AlternativeUserID") for x in _of(receiver, "110100") for p in x.xml.findall("ActiveParticipant")
                   if _codes(p, "RoleIDCode") == ["110150"]}
        assert app_ids == {f"AETITLES={AET}"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        receiver.stop()


def test_getscu_is_instances_transferred_to_the_calling_ae(
        scp: DicomServer, service: ArchiveService, receiver: SyslogReceiver, pydicom_test_files: Path,
        tmp_path: Path) -> None:
    service.import_paths(_files(pydicom_test_files, tmp_path / "in", {STUDY_B: ("PAT-B", 2)}))
    out = tmp_path / "got"
    out.mkdir()
    r = subprocess.run(["getscu", "-aet", "VIEWER", "-aec", AET, "-S", "+B", "-od", str(out),
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_B}",
                        "127.0.0.1", str(scp.port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(list(out.iterdir())) == 2
    (rec,) = wait_for(lambda: _of(receiver, "110104"), what="an instances-transferred message")
    assert _study_ids(rec.xml) == [STUDY_B] and _patient_ids(rec.xml) == ["PAT-B"]
    dest = [p for p in rec.xml.findall("ActiveParticipant") if _codes(p, "RoleIDCode") == ["110152"]]
    assert [(p.get("UserID"), p.get("AlternativeUserID"), p.get("UserIsRequestor")) for p in dest] == \
        [("VIEWER", "AETITLES=VIEWER", "true")]
    detail = rec.xml.find("ParticipantObjectIdentification/ParticipantObjectDetail")
    assert detail is not None and base64.b64decode(detail.get("value", "")) == b"c-get"


def test_purge_and_restore_from_the_trail(service: ArchiveService, receiver: SyslogReceiver,
                                          pydicom_test_files: Path, tmp_path: Path) -> None:
    from ilm.lifecycle.retention import expire_study

    service.import_paths(_files(pydicom_test_files, tmp_path / "in", {STUDY_A: ("PAT-A", 1), STUDY_B: ("PAT-B", 1)}))
    for uid in (STUDY_A, STUDY_B):
        assert expire_study(service.catalog, uid, quarantine=timedelta(0), by="dr-admin")
    service.restore(STUDY_B, "dr-admin")
    report = service.purge("dr-purge")
    assert report.purged == [STUDY_A]
    wait_for(lambda: len(_of(receiver, "110105")) == 3, what="two expiries and one purge")
    phases = {}
    for rec in _of(receiver, "110105"):
        details = {d.get("type"): base64.b64decode(d.get("value", "")).decode()
                   for d in rec.xml.findall("ParticipantObjectIdentification/ParticipantObjectDetail")}
        phases[(_study_ids(rec.xml)[0], details["ilm-phase"])] = _patient_ids(rec.xml)
    assert phases == {(STUDY_A, "quarantined"): ["PAT-A"], (STUDY_B, "quarantined"): ["PAT-B"],
                      (STUDY_A, "purged"): ["PAT-A"]}  # the purged study's patient from its tombstone
    (restored,) = wait_for(lambda: _of(receiver, "110103"), what="the restore")
    assert restored.xml.find("EventIdentification").get("EventActionCode") == "U"  # type: ignore[union-attr]
    assert _study_ids(restored.xml) == [STUDY_B] and _patient_ids(restored.xml) == ["PAT-B"]


def test_stow_rs_request_is_one_import_per_study(service: ArchiveService, receiver: SyslogReceiver,
                                                 pydicom_test_files: Path, tmp_path: Path) -> None:
    from dicomweb_client import DICOMwebClient

    files = _files(pydicom_test_files, tmp_path / "in", {STUDY_A: ("PAT-A", 3), STUDY_B: ("PAT-B", 1)})
    with serve(create_app(service, auth=False)) as base:
        DICOMwebClient(f"{base}/dicomweb").store_instances([pydicom.dcmread(f) for f in files])
    imports = wait_for(lambda: len(_of(receiver, "110107")) >= 2 and _of(receiver, "110107"), what="2 imports")
    service.atna.flush()
    assert len(_of(receiver, "110107")) == 2
    counts = {}
    for rec in imports:
        sop = rec.xml.find("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
        assert sop is not None
        counts[_study_ids(rec.xml)[0]] = (_patient_ids(rec.xml), sop.get("NumberOfInstances"))
        sender = [p for p in rec.xml.findall("ActiveParticipant") if _codes(p, "RoleIDCode") == ["110153"]]
        assert [(p.get("UserID"), p.get("NetworkAccessPointTypeCode")) for p in sender] == [("127.0.0.1", "2")]
    assert counts == {STUDY_A: (["PAT-A"], "3"), STUDY_B: (["PAT-B"], "1")}


def test_an_import_batch_with_refused_instances_is_a_minor_failure() -> None:
    from ilm.atna.imports import ImportBatch
    from ilm.models import InstanceFacts

    sent: list[m.AuditEvent] = []
    batch = ImportBatch(sent.extend, m.Participant("ilm"), m.Participant("MOD", address="10.0.0.9"), clock=lambda: NOW)
    with batch:
        for i, ok in enumerate((True, True, False)):
            batch.note(InstanceFacts(f"1.2.3.{i}", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.9", "1.2.3", "1.2.840.10008.1.2",
                                     patient_id="P"), stored=ok)
    batch.close()  # closing twice sends nothing more
    (ev,) = sent
    assert (ev.event_id.code, ev.outcome, ev.outcome_description) == ("110107", 4, "1 instance(s) of the study refused")
    assert ev.studies[0].sop_classes == (("1.2.840.10008.5.1.4.1.1.2", 2),)


# -- authentication and security alerts ---------------------------------------------------------


def _participant(rec: Syslog5424, requestor: bool) -> ET.Element:
    [p] = [p for p in rec.xml.findall("ActiveParticipant") if p.get("UserIsRequestor") == str(requestor).lower()]
    return p


def test_refused_tokens_and_roles_are_audited_never_the_token(service: ArchiveService, receiver: SyslogReceiver,
                                                              ) -> None:
    """A presented token that is unknown or revoked is a failed User Authentication (110114,
    type Login, outcome 4) naming the client's address; a valid token used beyond its role is
    a Security Alert (110113, Use of Restricted Function) naming the route; a dashboard sign-in
    is a successful User Authentication. The token itself is in no message."""
    _, viewer = service.token_create("ward-viewer", "viewer", expires=None, by="test")
    _, gone = service.token_create("old-script", "operator", expires=None, by="test")
    service.token_revoke("old-script", by="test")
    with serve(create_app(service)) as base:
        bad = httpx.get(f"{base}/api/studies", headers={"Authorization": "Bearer ilm_not-a-real-token"}, timeout=60)
        assert bad.status_code == 401
        revoked = httpx.get(f"{base}/api/studies", headers={"Authorization": f"Bearer {gone}"}, timeout=60)
        assert revoked.status_code == 401
        none = httpx.get(f"{base}/api/studies", timeout=60)  # no credentials presented: not an attempt
        assert none.status_code == 401
        forbidden = httpx.post(f"{base}/api/holds", json={"study_uid": "1.2.3", "reason": "r"}, timeout=60,
                               headers={"Authorization": f"Bearer {viewer}"})
        assert forbidden.status_code == 403
        signed_in = httpx.post(f"{base}/login", data={"token": viewer, "next": "/"}, timeout=60)
        assert signed_in.status_code == 303
    auths = wait_for(lambda: _of(receiver, "110114") if len(_of(receiver, "110114")) >= 3 else [],
                     what="three user-authentication messages")
    assert len(auths) == 3  # the request without a token is not one
    for rec in auths:
        assert _codes(rec.xml, "EventIdentification/EventTypeCode") == ["110122"]  # Login
        assert _participant(rec, True).get("NetworkAccessPointID") == "127.0.0.1"
        assert _participant(rec, False).get("UserID") == "ilm"
    outcomes = {(_participant(r, True).get("UserID"), r.xml.find("EventIdentification").get(  # type: ignore[union-attr]
        "EventOutcomeIndicator")) for r in auths}
    assert outcomes == {("unknown", "4"), ("old-script", "4"), ("ward-viewer", "0")}
    (alert,) = wait_for(lambda: _of(receiver, "110113"), what="the security alert")
    assert _codes(alert.xml, "EventIdentification/EventTypeCode") == ["110132"]  # Use of Restricted Function
    assert alert.xml.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    assert _participant(alert, True).get("UserID") == "ward-viewer"
    (subject,) = _objects(alert.xml, "2", "13")
    assert subject.get("ParticipantObjectID") == "POST /api/holds"
    assert _codes(subject, "ParticipantObjectIDTypeCode") == ["12"]
    raw = b"".join(receiver.messages)
    assert viewer.encode() not in raw and gone.encode() not in raw and b"not-a-real-token" not in raw


def test_refused_association_is_a_node_authentication_alert(service: ArchiveService, receiver: SyslogReceiver,
                                                            ) -> None:
    if shutil.which("echoscu") is None:
        pytest.fail("dcmtk is missing: run 'make test', which installs the dcmtk package")
    srv = start_dicom_server(service, DicomSettings(ae_title=AET, host="127.0.0.1", port=0,
                                                    allowed_calling_aets=["PACS"]))
    try:
        refused = subprocess.run(["echoscu", "-aet", "INTRUDER", "-aec", AET, "127.0.0.1", str(srv.port)],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        allowed = subprocess.run(["echoscu", "-aet", "PACS", "-aec", AET, "127.0.0.1", str(srv.port)],
                                 capture_output=True, text=True, timeout=60)
        assert allowed.returncode == 0, allowed.stderr
    finally:
        srv.shutdown(grace=2)
    (alert,) = wait_for(lambda: _of(receiver, "110113"), what="the security alert")
    assert _codes(alert.xml, "EventIdentification/EventTypeCode") == ["110126"]  # Node Authentication
    who = _participant(alert, True)
    assert (who.get("UserID"), who.get("AlternativeUserID"), who.get("NetworkAccessPointID")) == \
        ("INTRUDER", "AETITLES=INTRUDER", "127.0.0.1")
    (subject,) = _objects(alert.xml, "2", "13")
    assert subject.get("ParticipantObjectID") == f"dicom://{service.settings.dicom.ae_title}"
    desc = subject.find("ParticipantObjectDetail")
    assert desc is not None and b"allowed_calling_aets" in base64.b64decode(desc.get("value", ""))


def test_wado_read_with_a_token_names_the_token_and_the_address(service: ArchiveService, receiver: SyslogReceiver,
                                                                pydicom_test_files: Path, tmp_path: Path) -> None:
    """With authentication on, a WADO-RS reader is named by its API token's name (and its address),
    in the audit message and in the access log, so that a read can be traced to a system."""
    service.import_paths(_files(pydicom_test_files, tmp_path / "in", {STUDY_A: ("PAT-A", 1)}))
    _, token = service.token_create("viewer-ws3", "viewer", expires=None, by="test")
    with serve(create_app(service)) as base:
        r = httpx.get(f"{base}/dicomweb/studies/{STUDY_A}", timeout=60, headers={
            "Accept": 'multipart/related; type="application/dicom"', "Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    (rec,) = wait_for(lambda: _of(receiver, "110104"), what="an instances-transferred message")
    dest = _participant(rec, True)
    assert (dest.get("UserID"), dest.get("NetworkAccessPointID")) == ("token:viewer-ws3", "127.0.0.1")
    assert _codes(dest, "RoleIDCode") == ["110152"]
    service.access.flush()
    with service.catalog.read() as conn:
        rows = conn.exec_driver_sql("SELECT interface, who FROM access_log").fetchall()
    assert [tuple(r) for r in rows] == [("wado-rs", "token:viewer-ws3")]
