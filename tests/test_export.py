"""Export of studies out of the archive: ``ilm export`` and ``GET /api/studies/{uid}/export``.

Real files from pydicom's test data on filesystem tiers (and an archive tier),
both catalogs; the exported files are read back with pydicom (a DICOMDIR with
pydicom's FileSet) and their SHA-256 compared with the catalog's. The DICOM
audit messages go to a syslog receiver the test starts on 127.0.0.1 and are
parsed as a receiver sees them.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydicom.fileset import FileSet
from typer.testing import CliRunner

from conftest import write_config
from support.retrieve_data import ARCHIVE_TIER, StoredStudy, make_study
from support.syslog_receiver import SyslogReceiver, wait_for
from test_atna import _codes, _of, _patient_ids, _study_ids, receiver  # noqa: F401  (the receiver fixture)

from ilm import audit as audit_chain
from ilm.cli import app as cli_app
from ilm.config import Settings, load_settings
from ilm.errors import NotReady
from ilm.lifecycle.move import move_study
from ilm.service import ArchiveService
from ilm.web import create_app

runner = CliRunner()
SOURCES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"]


@pytest.fixture
def settings(home: Path, catalog_url: str, receiver: SyslogReceiver) -> Settings:
    write_config(home, catalog_url, ARCHIVE_TIER + f'\n[audit]\nsyslog_host = "127.0.0.1"\nsyslog_port = {receiver.port}\n'
                 'retry_seconds = 0.2\nsource_id = "ILM-TEST"\n')
    return load_settings(home=home, env={})


@pytest.fixture
def study(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> StoredStudy:
    return make_study(service, [pydicom_test_files / n for n in SOURCES], tmp_path / "src", per_source=2,
                      patient_id="EXP-1")


def cli(settings: Settings, *args: str) -> tuple[int, str]:
    r = runner.invoke(cli_app, [*args, "--home", str(settings.home)])
    return r.exit_code, r.output


def catalog_sha(service: ArchiveService, study_uid: str) -> dict[str, str]:
    with service.catalog.read() as c:
        rows = c.execute(sa.text("SELECT i.sop_uid, i.sha256 FROM instances i JOIN studies s ON s.id = i.study_pk "
                                 "WHERE s.study_uid = :u"), {"u": study_uid}).all()
    return {r[0]: r[1] for r in rows}


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def by_sop(files: dict[str, bytes]) -> dict[str, str]:
    """SOP Instance UID (read with pydicom) -> SHA-256 of the file."""
    return {str(pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID): hashlib.sha256(b).hexdigest()
            for rel, b in files.items() if rel != "DICOMDIR"}


def access_rows(service: ArchiveService) -> list[tuple[str, str, str, int]]:
    service.access.flush()
    with service.catalog.read() as c:
        return [tuple(r) for r in c.execute(sa.text(
            "SELECT study_uid, interface, who, instances FROM access_log ORDER BY id")).all()]


def exports_in_trail(service: ArchiveService) -> list[audit_chain.AuditEntry]:
    return [e for e in service.audit() if e.action == "study.export"]


# -- ilm export into a folder ------------------------------------------------------------------


def test_cli_export_writes_the_stored_bytes_counts_an_access_and_audits(
        settings: Settings, service: ArchiveService, study: StoredStudy, receiver: SyslogReceiver,
        tmp_path: Path) -> None:
    out = tmp_path / "usb"
    assert service.study(study.study_uid).summary.last_accessed_at is None  # type: ignore[union-attr]
    code, output = cli(settings, "export", study.study_uid, "--to", str(out), "--by", "dr.who")
    assert code == 0, output
    assert "6 instances" in output and "6 files written" in output
    files = files_under(out)
    assert all(rel.startswith(f"{study.study_uid}/") and rel.endswith(".dcm") for rel in files)
    assert by_sop(files) == catalog_sha(service, study.study_uid)  # every instance, the very bytes catalogued
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left
    # an access (last access, access log) by the login, over "export"
    assert access_rows(service) == [(study.study_uid, "export", "dr.who", 6)]
    assert service.study(study.study_uid).summary.last_accessed_at is not None  # type: ignore[union-attr]
    # one entry in the hash-chained trail, and the chain still holds
    [entry] = exports_in_trail(service)
    assert (entry.actor, entry.study_uid) == ("dr.who", study.study_uid)
    assert entry.detail == {"to": str(out), "interface": "cli", "instances": 6, "dicomdir": False}
    assert service.audit_verify() == []
    # the DICOM audit message: Export (110106), ilm the source, the exporter the destination
    (rec,) = wait_for(lambda: _of(receiver, "110106"), what="the export message")
    ident = rec.xml.find("EventIdentification")
    assert ident is not None and (ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == ("R", "0")
    assert _study_ids(rec.xml) == [study.study_uid] and _patient_ids(rec.xml) == ["EXP-1"]
    roles = {p.get("UserID"): (_codes(p, "RoleIDCode"), p.get("UserIsRequestor")) for p in rec.xml.findall("ActiveParticipant")}
    assert roles == {"ilm": (["110153"], "false"), "dr.who": (["110152"], "true")}
    [dest] = [p for p in rec.xml.findall("ActiveParticipant") if p.get("UserID") == "dr.who"]
    assert dest.get("NetworkAccessPointID") == socket.gethostname()  # the machine it was written on
    assert dest.get("AlternativeUserID") is None  # a login, not an AE title
    sops = rec.xml.findall("ParticipantObjectIdentification/ParticipantObjectDescription/SOPClass")
    assert sum(int(s.get("NumberOfInstances", "0")) for s in sops) == 6


def test_export_again_keeps_identical_files_and_refuses_a_different_one(
        settings: Settings, service: ArchiveService, study: StoredStudy, pydicom_test_files: Path,
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli(settings, "export", study.study_uid, "--to", str(out))[0] == 0
    before = files_under(out)
    code, output = cli(settings, "export", study.study_uid, "--to", str(out), "--json")
    assert code == 0, output
    report = json.loads(output)
    assert (report["written"], report["unchanged"], report["files"]) == (0, 6, 6)
    # a file with other bytes where one instance goes: refused as a whole, nothing replaced or added
    victim = sorted(before)[2]
    (out / victim).write_bytes(b"not the stored instance")
    other = make_study(service, [pydicom_test_files / "CT_small.dcm"], tmp_path / "src2")
    code, output = cli(settings, "export", other.study_uid, study.study_uid, "--to", str(out))
    assert code == 2
    assert victim.split("/")[-1] in output and "different file" in output and "nothing exported" in output
    after = files_under(out)
    assert after[victim] == b"not the stored instance"
    assert set(after) == set(before)  # the other study was not written either
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert [e.study_uid for e in exports_in_trail(service)] == [study.study_uid, study.study_uid]


@pytest.mark.parametrize("bad, words", [
    ("1.2.abc", "not digits and dots"),
    ("1.2." + "3" * 70, "longer than 64"),
    ("../../etc", "not digits and dots"),
    ("1.2.3.4.5", "no study 1.2.3.4.5"),
])
def test_bad_uids_are_refused_with_exit_2_and_nothing_written(
        settings: Settings, service: ArchiveService, study: StoredStudy, tmp_path: Path, bad: str, words: str) -> None:
    out = tmp_path / "out"
    code, output = cli(settings, "export", study.study_uid, bad, "--to", str(out))
    assert code == 2 and words in output, output
    assert files_under(out) == {} if out.exists() else True
    assert access_rows(service) == [] and exports_in_trail(service) == []


def test_a_destination_that_cannot_be_written_is_refused(
        settings: Settings, service: ArchiveService, study: StoredStudy, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, output = cli(settings, "export", study.study_uid, "--to", str(blocker))
    assert code == 2 and "is not a folder" in output
    code, output = cli(settings, "export", study.study_uid, "--to", str(blocker / "sub"))
    assert code == 2 and "cannot write there" in output and str(blocker / "sub") in output
    assert blocker.read_text() == "x"
    assert access_rows(service) == [] and exports_in_trail(service) == []


# -- --dicomdir: a DICOM file-set -----------------------------------------------------------------


def test_dicomdir_export_is_a_file_set_pydicom_reads(settings: Settings, service: ArchiveService,
                                                     study: StoredStudy, tmp_path: Path) -> None:
    out = tmp_path / "cd"
    code, output = cli(settings, "export", study.study_uid, "--to", str(out), "--dicomdir")
    assert code == 0, output
    fs = FileSet(out / "DICOMDIR")
    assert len(fs) == 6
    got = {str(i.SOPInstanceUID): hashlib.sha256(Path(i.path).read_bytes()).hexdigest() for i in fs}
    assert got == catalog_sha(service, study.study_uid)
    for inst in fs:
        rel = Path(inst.path).relative_to(out)
        assert all(len(part) <= 8 and part == part.upper() for part in rel.parts)  # File IDs as on media
    [patient] = fs.find_values("PatientID")
    assert patient == "EXP-1"
    assert fs.find_values("StudyInstanceUID") == [study.study_uid]
    # a second file-set into the same folder would have to rewrite its DICOMDIR: refused, nothing changed
    before = files_under(out)
    code, output = cli(settings, "export", study.study_uid, "--to", str(out), "--dicomdir")
    assert code == 2 and "holds a DICOMDIR already" in output
    assert files_under(out) == before
    [entry, ] = exports_in_trail(service)
    assert entry.detail["dicomdir"] is True


# -- archive tiers: restored first, like a C-GET --------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.t


def test_a_study_on_an_archive_tier_is_exported_only_once_restored(
        settings: Settings, service: ArchiveService, study: StoredStudy, tmp_path: Path) -> None:
    move_study(service.catalog, service.tier, study.study_uid, "vault")
    out = tmp_path / "out"
    code, output = cli(settings, "export", study.study_uid, "--to", str(out))
    assert code == 1 and "must be restored first" in output and f"ilm recall {study.study_uid}" in output
    assert not out.exists() or files_under(out) == {}
    clock = service.clock = Clock()
    service.recall([study.study_uid], "test")
    with pytest.raises(NotReady, match="being restored"):
        service.export([study.study_uid], out, by="test")
    assert files_under(out) == {}
    clock.t += timedelta(seconds=31)  # the vault's retrieval latency is 30 s
    assert service.process_restores().completed
    report = service.export([study.study_uid], out, by="test")
    assert report.written == 6
    assert by_sop(files_under(out)) == catalog_sha(service, study.study_uid)
    assert [r[1] for r in access_rows(service)] == ["export"]


# -- REST: GET /api/studies/{uid}/export ----------------------------------------------------------


def _token(service: ArchiveService, role: str) -> dict[str, str]:
    _, secret = service.token_create(f"t-{role}", role, expires=None, by="test")
    return {"Authorization": f"Bearer {secret}"}


def test_rest_export_is_a_zip_for_operators_counted_and_audited(
        service: ArchiveService, study: StoredStudy, receiver: SyslogReceiver) -> None:
    url = f"/api/studies/{study.study_uid}/export"
    with TestClient(create_app(service)) as client:
        assert client.get(url).status_code == 401
        assert client.get(url, headers=_token(service, "viewer")).status_code == 403
        assert access_rows(service) == [] and exports_in_trail(service) == []
        op = _token(service, "operator")
        r = client.get(url, headers=op)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/zip"
        assert study.study_uid in r.headers["content-disposition"]
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            files = {n: z.read(n) for n in z.namelist()}
        assert by_sop(files) == catalog_sha(service, study.study_uid)
        r = client.get(url + "?dicomdir=true", headers=op)
        assert r.status_code == 200
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            names = z.namelist()
            assert "DICOMDIR" in names and len(names) == 7
            dicomdir = pydicom.dcmread(io.BytesIO(z.read("DICOMDIR")))
        assert len([x for x in dicomdir.DirectoryRecordSequence if x.DirectoryRecordType == "IMAGE"]) == 6
        missing = client.get("/api/studies/1.2.3.4.5/export", headers=op)
        assert missing.status_code == 404 and "no study 1.2.3.4.5" in missing.json()["detail"]
        assert client.get("/api/studies/1.2.x/export", headers=op).status_code == 422
    assert [(r[1], r[2], r[3]) for r in access_rows(service)] == [("export", "token:t-operator", 6)] * 2
    assert [e.actor for e in exports_in_trail(service)] == ["token:t-operator"] * 2
    assert not list((service.settings.home / "tmp").iterdir())  # the ZIP files are gone once sent
    recs = wait_for(lambda: len(_of(receiver, "110106")) >= 2 and _of(receiver, "110106"), what="export messages")
    assert {_study_ids(x.xml)[0] for x in recs} == {study.study_uid}
    dest = [p for p in recs[0].xml.findall("ActiveParticipant") if _codes(p, "RoleIDCode") == ["110152"]]
    assert [(p.get("UserID"), p.get("NetworkAccessPointID")) for p in dest] == [("token:t-operator", "testclient")]


def test_rest_export_of_an_archived_study_is_503_and_writes_nothing(
        service: ArchiveService, study: StoredStudy) -> None:
    move_study(service.catalog, service.tier, study.study_uid, "vault")
    with TestClient(create_app(service, auth=False)) as client:
        r = client.get(f"/api/studies/{study.study_uid}/export")
    assert r.status_code == 503 and "restored first" in r.json()["detail"]
    assert access_rows(service) == [] and exports_in_trail(service) == []
    assert not list((service.settings.home / "tmp").iterdir())


def test_a_packed_study_is_exported_member_by_member(tmp_path: Path, catalog_url: str,
                                                     pydicom_test_files: Path) -> None:
    """On a tier with pack_studies the instances are byte ranges of one object: each is exported
    as its own file, the very bytes catalogued."""
    home = tmp_path / "packed-home"
    write_config(home, catalog_url, '\n[tiers.packs]\nkind = "filesystem"\npath = "tiers/packs"\n'
                                    'fsync = false\npack_studies = true\n')
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        st = make_study(svc, [pydicom_test_files / n for n in SOURCES], tmp_path / "src", per_source=1)
        assert move_study(svc.catalog, svc.tier, st.study_uid, "packs").ok
        assert {r.tier for r in svc.instances_to_read(st.study_uid)} == {"packs"}
        report = svc.export([st.study_uid], tmp_path / "out", dicomdir=True, by="test")
        assert report.written == 4  # three instances and the DICOMDIR
        fs = FileSet(tmp_path / "out" / "DICOMDIR")
        assert {str(i.SOPInstanceUID): hashlib.sha256(Path(i.path).read_bytes()).hexdigest() for i in fs} == \
            catalog_sha(svc, st.study_uid)
    finally:
        svc.close()
