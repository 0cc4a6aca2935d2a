"""End to end with encrypted tiers: ingest, a planned move onto an encrypted S3
tier (SeaweedFS), WADO-RS reads over HTTP, a move back to a plain tier, packed
studies, and a changed byte in the bucket that is never served. Every catalog."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest

from conftest import write_config
from support.retrieve_data import StoredStudy, make_study
from support.seaweed import SeaweedFS
from support.http import serve
from test_wado import parts

from ilm.config import Settings, load_settings
from ilm.errors import DecryptionFailed
from ilm.keyring import KeyRing
from ilm.service import ArchiveService
from ilm.storage import envelope
from ilm.web import create_app

pytestmark = pytest.mark.s3

SOURCES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"]
ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


@pytest.fixture
def buckets(s3_server: SeaweedFS) -> dict[str, str]:
    return {"cloud": s3_server.new_bucket_name("enc"), "packs": s3_server.new_bucket_name("encpack")}


@pytest.fixture
def settings(home: Path, catalog_url: str, s3_server: SeaweedFS, buckets: dict[str, str]) -> Settings:
    s3 = (f'endpoint_url = "{s3_server.endpoint_url}"\naccess_key_id = "{s3_server.access_key}"\n'
          f'secret_access_key = "{s3_server.secret_key}"\ncreate_bucket = true\nencryption = "envelope"\n')
    write_config(home, catalog_url, f"""
[tiers.cloud]
kind = "s3"
bucket = "{buckets['cloud']}"
{s3}
[tiers.packs]
kind = "s3"
bucket = "{buckets['packs']}"
pack_studies = true
{s3}""")
    KeyRing(home / "keyring.toml").add("k1")
    return load_settings(home=home, env={})


@pytest.fixture
def study(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> StoredStudy:
    return make_study(service, [pydicom_test_files / n for n in SOURCES], tmp_path / "src")


@pytest.fixture
def http(service: ArchiveService) -> Iterator[str]:
    with serve(create_app(service, auth=False)) as base:
        yield f"{base}/dicomweb"


def _move(service: ArchiveService, tmp_path: Path, src: str, dst: str) -> None:
    policy = tmp_path / f"{src}-to-{dst}.yaml"
    policy.write_text(f"name: {src}-to-{dst}\nrules:\n  - id: move\n    when: {{current_tier: {src}}}\n"
                      f"    action: {{transition: {dst}}}\n")
    plan = service.plan(policy, as_of=date.today(), by="test").plan
    report = service.apply(plan.id, approved_by="test")
    assert report.done and not report.failed, report


def _bucket(sw: SeaweedFS, bucket: str) -> dict[str, bytes]:
    c = sw.client()
    keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {k: c.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _wado_instance(http: str, study: StoredStudy, series: str, sop: str) -> httpx.Response:
    return httpx.get(f"{http}/studies/{study.study_uid}/series/{series}/instances/{sop}", headers=ACCEPT, timeout=60)


def test_move_to_encrypted_s3_then_wado_then_back_to_plain(
        service: ArchiveService, study: StoredStudy, http: str, s3_server: SeaweedFS, buckets: dict[str, str],
        tmp_path: Path, home: Path) -> None:
    _move(service, tmp_path, "hot", "cloud")
    assert {r.tier for r in service.instances_to_read(study.study_uid)} == {"cloud"}
    held = _bucket(s3_server, buckets["cloud"])
    assert len(held) == len(SOURCES)
    for blob in held.values():  # ciphertext in the bucket: no DICOM preamble, no pixel data in clear
        assert blob.startswith(b"ILMENC") and b"DICM" not in blob
    assert not any(study.blobs[u][200:264] in b for u in study.sop_uids for b in held.values())

    # WADO-RS reads each instance back, byte for byte, and the whole study.
    for series, sops in study.series.items():
        for sop in sops:
            r = _wado_instance(http, study, series, sop)
            assert r.status_code == 200
            assert parts(r)[0][1] == study.blobs[sop]
    r = httpx.get(f"{http}/studies/{study.study_uid}", headers=ACCEPT, timeout=60)
    assert sorted(c for _h, c in parts(r)) == sorted(study.blobs.values())

    # Back to a plain tier: decrypted, checked against the catalog's SHA-256, written in clear.
    _move(service, tmp_path, "cloud", "warm")
    assert _bucket(s3_server, buckets["cloud"]) == {}
    on_disk = sorted(p.read_bytes() for p in (home / "tiers" / "warm").rglob("*.dcm"))
    assert on_disk == sorted(study.blobs.values())


def test_packed_study_on_an_encrypted_tier_and_a_changed_byte(
        service: ArchiveService, http: str, s3_server: SeaweedFS, buckets: dict[str, str],
        tmp_path: Path, pydicom_test_files: Path) -> None:
    # Three copies of each file: a pack of several 64 KiB segments.
    study = make_study(service, [pydicom_test_files / n for n in SOURCES], tmp_path / "src", per_source=3)
    _move(service, tmp_path, "hot", "packs")
    refs = service.instances_to_read(study.study_uid)
    assert {r.tier for r in refs} == {"packs"} and all(r.pack_offset is not None for r in refs)
    for r in refs:  # each instance by a ranged read of the segments that hold it
        assert service.read(r) == study.blobs[r.sop_uid]
    (pack_key, blob), = _bucket(s3_server, buckets["packs"]).items()

    # One byte of the stored pack changes (in the last instance's bytes).
    victim = max(refs, key=lambda r: r.pack_offset or 0)
    assert victim.pack_offset is not None
    segment = (victim.pack_offset + 100) // envelope.SEGMENT
    pos = envelope.HEADER_SIZE + segment * (envelope.SEGMENT + 16) + (victim.pack_offset + 100) % envelope.SEGMENT
    s3_server.client().put_object(Bucket=buckets["packs"], Key=pack_key,
                                  Body=blob[:pos] + bytes([blob[pos] ^ 0x80]) + blob[pos + 1:])
    with pytest.raises(DecryptionFailed, match="integrity failure"):
        service.read(victim)
    r = _wado_instance(http, study, victim.series_uid, victim.sop_uid)
    assert r.status_code == 503 and "integrity failure" in r.text
    assert study.blobs[victim.sop_uid][-64:] not in r.content
    # Instances in segments the change does not touch are still served (each checks its own tags).
    untouched = [x for x in refs if x.pack_offset is not None and x.pack_length is not None
                 and (x.pack_offset + x.pack_length - 1) // envelope.SEGMENT < segment]
    assert untouched
    for x in untouched:
        assert service.read(x) == study.blobs[x.sop_uid]


@pytest.mark.dcmtk
def test_c_get_from_an_encrypted_tier_sends_the_images_and_never_a_damaged_one(
        service: ArchiveService, s3_server: SeaweedFS, buckets: dict[str, str], tmp_path: Path,
        pydicom_test_files: Path, caplog: pytest.LogCaptureFixture) -> None:
    """dcmtk's getscu retrieves a study from the encrypted S3 tier; after one
    object is changed in the bucket, that instance is never sent: the retrieve
    stops with a failure naming the integrity failure (ilm.dicom.retrieve stops
    at the first instance it cannot read), and what was sent is intact."""
    from test_dicom_retrieve import _keys, assert_as_stored, getscu, received

    from ilm.config import DicomSettings
    from ilm.dicom.server import start_dicom_server

    study = make_study(service, [pydicom_test_files / n for n in ("CT_small.dcm", "MR_small.dcm")],
                       tmp_path / "src", per_source=2)
    _move(service, tmp_path, "hot", "cloud")
    srv = start_dicom_server(service, DicomSettings(ae_title="ILMTEST", host="127.0.0.1", port=0))
    try:
        r = getscu(srv, tmp_path / "all", "-S", _keys("STUDY", study))
        assert r.returncode == 0, r.stderr
        assert_as_stored(received(tmp_path / "all"), study, study.sop_uids)

        victim = study.sop_uids[0]
        series = next(s for s, sops in study.series.items() if victim in sops)
        key = f"{study.study_uid}/{series}/{victim}.dcm"
        blob = s3_server.client().get_object(Bucket=buckets["cloud"], Key=key)["Body"].read()
        pos = envelope.HEADER_SIZE + 500
        s3_server.client().put_object(Bucket=buckets["cloud"], Key=key,
                                      Body=blob[:pos] + bytes([blob[pos] ^ 1]) + blob[pos + 1:])
        r = getscu(srv, tmp_path / "after", "-S", _keys("STUDY", study))
        got = received(tmp_path / "after")
        assert victim not in got and len(got) < len(study.sop_uids)
        assert_as_stored(got, study, list(got))
        assert f"{victim}.dcm: integrity failure" in caplog.text
        assert "Failed" in r.stdout + r.stderr or "Warning" in r.stdout + r.stderr
    finally:
        srv.shutdown(grace=2)
