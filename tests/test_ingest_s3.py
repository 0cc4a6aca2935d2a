"""Ingest through the service layer onto an S3 tier on a real SeaweedFS server,
including the server going down and coming back. Runs on every catalog."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from conftest import write_config
from support.seaweed import SeaweedFS

from ilm.config import load_settings
from ilm.models import IngestStatus
from ilm.service import ArchiveService
from ilm.uids import instance_key

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_service(tmp_path: Path, catalog_url: str, s3_server: SeaweedFS) -> Iterator[tuple[ArchiveService, str]]:
    bucket = s3_server.new_bucket_name("ingest")
    home = tmp_path / "home"
    write_config(
        home,
        catalog_url,
        extra=f"""
[tiers.cloud]
kind = "s3"
bucket = "{bucket}"
prefix = "dicom"
endpoint_url = "{s3_server.endpoint_url}"
access_key_id = "{s3_server.access_key}"
secret_access_key = "{s3_server.secret_key}"
create_bucket = true
connect_timeout_seconds = 1
max_attempts = 2

[ingest]
tier = "cloud"
""",
    )
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        yield svc, bucket
    finally:
        svc.close()


def _held_sha256(sw: SeaweedFS, bucket: str, key: str) -> str:
    head = sw.client().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return base64.b64decode(head["ChecksumSHA256"]).hex()


def _catalog_rows(svc: ArchiveService, sop_uid: str) -> tuple[int, int]:
    with svc.catalog.read() as c:
        inst = c.execute(sa.text("SELECT count(*) FROM instances WHERE sop_uid = :u"), {"u": sop_uid}).scalar_one()
        locs = c.execute(
            sa.text("SELECT count(*) FROM locations l JOIN instances i ON i.id = l.instance_pk WHERE i.sop_uid = :u"),
            {"u": sop_uid},
        ).scalar_one()
    return int(inst), int(locs)


def test_ingest_to_s3_survives_the_server_going_down(
    s3_service: tuple[ArchiveService, str], s3_server: SeaweedFS, pydicom_test_files: Path
) -> None:
    svc, bucket = s3_service
    ct, mr = pydicom_test_files / "CT_small.dcm", pydicom_test_files / "MR_small.dcm"

    # 1. Stored on the S3 tier, with the SHA-256 the server verified on upload.
    first = svc.ingest_path(ct)
    assert first.status is IngestStatus.STORED, first.reason
    ds = pydicom.dcmread(ct)
    key = "dicom/" + instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    with svc.catalog.read() as c:
        recorded = c.execute(
            sa.text("SELECT sha256 FROM instances WHERE sop_uid = :u"), {"u": ds.SOPInstanceUID}
        ).scalar_one()
    assert recorded == hashlib.sha256(ct.read_bytes()).hexdigest()
    assert _held_sha256(s3_server, bucket, key) == recorded
    assert s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read() == ct.read_bytes()
    detail = svc.study(ds.StudyInstanceUID)
    assert detail is not None
    assert [loc.tier for loc in detail.locations] == ["cloud"]
    assert detail.checksum_state == "verified"
    assert list(svc.settings.home.rglob("*.dcm")) == []  # nothing on the filesystem tiers

    # 2. Server down: the ingest is refused, quickly, naming the tier; nothing is catalogued.
    mr_ds = pydicom.dcmread(mr)
    mr_key = "dicom/" + instance_key(mr_ds.StudyInstanceUID, mr_ds.SeriesInstanceUID, mr_ds.SOPInstanceUID)
    with s3_server.down():
        began = time.monotonic()
        down = svc.ingest_path(mr)
        elapsed = time.monotonic() - began
        assert down.status is IngestStatus.REJECTED
        assert "'cloud'" in down.reason and "unreachable" in down.reason, down.reason
        assert s3_server.endpoint_url in down.reason
        assert elapsed < 10, f"a dead S3 tier took {elapsed:.1f}s to refuse an ingest"
        assert _catalog_rows(svc, mr_ds.SOPInstanceUID) == (0, 0)
        assert svc.study(mr_ds.StudyInstanceUID) is None

    # 3. Server back (same data folder): the earlier object is intact and the retry succeeds.
    assert _held_sha256(s3_server, bucket, key) == recorded
    again = svc.ingest_path(mr)
    assert again.status is IngestStatus.STORED, again.reason
    assert _catalog_rows(svc, mr_ds.SOPInstanceUID) == (1, 1)
    assert _held_sha256(s3_server, bucket, mr_key) == hashlib.sha256(mr.read_bytes()).hexdigest()
    assert svc.ingest_path(mr).status is IngestStatus.DUPLICATE


def test_uncatalogued_identical_object_on_s3_is_adopted(
    s3_service: tuple[ArchiveService, str], s3_server: SeaweedFS, pydicom_test_files: Path
) -> None:
    """A crash between upload and catalog commit leaves an object the catalog
    does not know; the next ingest of the same bytes meets ObjectExists from the
    conditional put and adopts it after comparing the server's SHA-256."""
    svc, bucket = s3_service
    ct = pydicom_test_files / "CT_small.dcm"
    ds = pydicom.dcmread(ct)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    data = ct.read_bytes()
    svc.tier("cloud").put(key, data, hashlib.sha256(data).hexdigest())
    r = svc.ingest_path(ct)
    assert r.status is IngestStatus.STORED, r.reason
    assert _catalog_rows(svc, ds.SOPInstanceUID) == (1, 1)


class _ServerError:
    """What a failing S3 server sends back: HTTP 500 InternalError. Registered on the
    tier's real boto3 client for PutObject only (every retry gets it too); the
    other calls (HEAD, GET) reach the real SeaweedFS."""

    status_code = 500
    headers = {"content-type": "application/xml"}
    content = b"<Error><Code>InternalError</Code><Message>injected by the test</Message></Error>"
    text = content.decode()
    raw = None


def _fail_puts(svc: ArchiveService) -> None:
    client = svc.tier("cloud")._s3()  # type: ignore[attr-defined]
    client.meta.events.register("before-send.s3.PutObject", lambda **kw: _ServerError())


def test_put_answered_with_server_error_but_object_present_is_adopted(
    s3_service: tuple[ArchiveService, str], s3_server: SeaweedFS, pydicom_test_files: Path
) -> None:
    """SeaweedFS sometimes answers a refused conditional put with InternalError
    (seen under load) instead of 412, or a put lands and its answer is lost: when
    the key is there afterwards, the put is "already exists" and the ingest adopts
    the identical bytes after comparing the stored SHA-256."""
    svc, bucket = s3_service
    ct = pydicom_test_files / "CT_small.dcm"
    ds = pydicom.dcmread(ct)
    key = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    data = ct.read_bytes()
    svc.tier("cloud").put(key, data, hashlib.sha256(data).hexdigest())
    _fail_puts(svc)
    r = svc.ingest_path(ct)
    assert r.status is IngestStatus.STORED, r.reason
    assert _catalog_rows(svc, ds.SOPInstanceUID) == (1, 1)
    assert _held_sha256(s3_server, bucket, f"dicom/{key}") == hashlib.sha256(data).hexdigest()


def test_put_answered_with_server_error_and_nothing_stored_records_nothing(
    s3_service: tuple[ArchiveService, str], s3_server: SeaweedFS, pydicom_test_files: Path
) -> None:
    """A server error with nothing stored stays an error naming the tier; nothing is catalogued."""
    svc, _ = s3_service
    ct = pydicom_test_files / "CT_small.dcm"
    ds = pydicom.dcmread(ct)
    _fail_puts(svc)
    r = svc.ingest_path(ct)
    assert r.status is not IngestStatus.STORED
    assert "cloud" in (r.reason or "") and "InternalError" in (r.reason or ""), r.reason
    assert _catalog_rows(svc, ds.SOPInstanceUID) == (0, 0)
