"""Moves from a file-system tier to an S3 tier on a real SeaweedFS server: the
server's own SHA-256 check of each upload is the verification of what it holds
(one PUT per instance, no HEAD or GET after it), and bytes that change on their
way, or a destination that stores other bytes than it was given, are refused
without deleting any source. Runs on every catalog."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa

from conftest import write_config
from support.faulty_tiers import CorruptingTier
from support.seaweed import SeaweedFS

from ilm.config import load_settings
from ilm.errors import ConfigError
from ilm.lifecycle.move import move_study
from ilm.service import ArchiveService
from ilm.storage import Tier

pytestmark = pytest.mark.s3
N = 6


def _cloud(s3_server: SeaweedFS, bucket: str, extra: str = "") -> str:
    return f"""
[tiers.cloud]
kind = "s3"
bucket = "{bucket}"
prefix = "dicom"
endpoint_url = "{s3_server.endpoint_url}"
access_key_id = "{s3_server.access_key}"
secret_access_key = "{s3_server.secret_key}"
create_bucket = true
max_attempts = 1
{extra}"""


@pytest.fixture
def s3_service(tmp_path: Path, catalog_url: str, s3_server: SeaweedFS) -> Iterator[tuple[ArchiveService, str]]:
    bucket = s3_server.new_bucket_name("move")
    home = tmp_path / "home"
    write_config(home, catalog_url, extra=_cloud(s3_server, bucket))
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        yield svc, bucket
    finally:
        svc.close()


def _study(svc: ArchiveService, src: Path, tmp: Path) -> str:
    ds = pydicom.dcmread(src)
    for i in range(N):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.778.{i + 1}"
        p = tmp / f"{i}.dcm"
        ds.save_as(p)
        assert svc.ingest_path(p).status.value == "stored"
    return str(ds.StudyInstanceUID)


def _hot_files(svc: ArchiveService) -> dict[str, str]:
    root = svc.settings.resolve("tiers/hot")
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.dcm")}


def _bucket(sw: SeaweedFS, bucket: str) -> dict[str, str]:
    """Key (without the tier's prefix) -> SHA-256 of the bytes the server returns, read independently of ilm."""
    client = sw.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out[str(o["Key"]).removeprefix("dicom/")] = hashlib.sha256(body).hexdigest()
    return out


def _locations(svc: ArchiveService) -> Counter[tuple[str, str]]:
    with svc.catalog.read() as c:
        return Counter((r[0], r[1]) for r in c.execute(sa.text("SELECT tier, state FROM locations")))


def _requests(tier: Tier) -> Counter[str]:
    """Count the S3 operations the tier's client sends from now on (botocore's event hooks)."""
    seen: Counter[str] = Counter()

    def count(model: Any, **_kw: Any) -> None:
        seen[model.name] += 1

    tier._s3().meta.events.register("before-call.s3", count)  # type: ignore[attr-defined]
    return seen


def test_move_to_s3_is_one_verified_put_per_instance(
        s3_service: tuple[ArchiveService, str], s3_server: SeaweedFS, pydicom_test_files: Path, tmp_path: Path) -> None:
    """The server checks each upload against the catalog's SHA-256 (or refuses
    it): that check is the verify step, so a move sends one PutObject per
    instance and nothing else to the store, and what the store then holds is
    the catalogued bytes."""
    svc, bucket = s3_service
    uid = _study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
    before = _hot_files(svc)
    cloud = svc.tier("cloud")
    seen = _requests(cloud)
    result = move_study(svc.catalog, svc.tier, uid, "cloud")
    assert result.ok and result.moved == N
    assert seen == Counter({"PutObject": N})
    assert _bucket(s3_server, bucket) == before  # the very bytes, read back independently
    assert _hot_files(svc) == {}
    assert _locations(svc) == Counter({("cloud", "verified"): N})


def test_upload_changed_on_its_way_is_refused_and_the_source_kept(
        s3_service: tuple[ArchiveService, str], s3_server: SeaweedFS, pydicom_test_files: Path, tmp_path: Path) -> None:
    """One byte of every upload flipped after ilm sent it with the catalog's
    SHA-256 (a faulty network between ilm and the store, on the real server):
    the server refuses each, nothing is stored or committed, no source is
    deleted, and the message blames the upload, not the sound source. Once the
    fault is gone the same move completes."""
    svc, bucket = s3_service
    uid = _study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
    before = _hot_files(svc)
    events = svc.tier("cloud")._s3().meta.events  # type: ignore[attr-defined]

    def flip(request: Any, **_kw: Any) -> None:
        body = bytearray(request.body.read() if hasattr(request.body, "read") else request.body)
        body[len(body) // 2] ^= 0xFF
        request.body = bytes(body)

    events.register("before-send.s3.PutObject", flip)
    result = move_study(svc.catalog, svc.tier, uid, "cloud")
    assert result.moved == 0 and len(result.failed) == N
    assert all("tier 'cloud': put" in f and "source copy on tier 'hot' is sound and kept" in f for f in result.failed)
    assert _bucket(s3_server, bucket) == {}
    assert _hot_files(svc) == before
    assert _locations(svc) == Counter({("hot", "verified"): N})
    with svc.catalog.read() as c:
        assert set(c.execute(sa.text("SELECT state FROM moves")).scalars()) == {"rolled_back"}

    events.unregister("before-send.s3.PutObject", flip)
    again = move_study(svc.catalog, svc.tier, uid, "cloud")
    assert again.ok and again.moved == N
    assert _bucket(s3_server, bucket) == before and _hot_files(svc) == {}


def test_s3_destination_storing_other_bytes_is_detected_and_the_source_kept(
        s3_service: tuple[ArchiveService, str], s3_server: SeaweedFS, pydicom_test_files: Path, tmp_path: Path) -> None:
    """A destination that stores other bytes than it was given and vouches for
    them (a faulty layer over the real S3 tier that changes the bytes and drops
    the SHA-256 it was asked to check): the digest of what the store accepted
    is compared with the catalog's, the object is removed again, nothing is
    committed and no source deleted."""
    svc, bucket = s3_service
    uid = _study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
    before = _hot_files(svc)
    bad = CorruptingTier(svc.tier("cloud"))
    result = move_study(svc.catalog, lambda n: bad if n == "cloud" else svc.tier(n), uid, "cloud")  # type: ignore[arg-type, return-value]
    assert result.moved == 0 and len(result.failed) == N
    assert all("holds other bytes than were written" in f for f in result.failed)
    assert _bucket(s3_server, bucket) == {}  # the uncommitted objects were removed
    assert _hot_files(svc) == before
    assert _locations(svc) == Counter({("hot", "verified"): N})


def test_upload_workers_is_a_checked_setting_of_an_s3_tier(tmp_path: Path, catalog_url: str, s3_server: SeaweedFS) -> None:
    """Concurrent uploads of a move into an S3 tier: 8 unless the tier says
    otherwise, and a value outside 1-64 is refused naming the tier and the key."""
    home = tmp_path / "home"
    write_config(home, catalog_url, extra=_cloud(s3_server, "b-default"))
    assert load_settings(home=home, env={}).tiers["cloud"].upload_workers == 8  # type: ignore[union-attr]
    write_config(home, catalog_url, extra=_cloud(s3_server, "b-set", "upload_workers = 16"))
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        assert svc.tier("cloud").upload_workers == 16  # type: ignore[attr-defined]
    finally:
        svc.close()
    write_config(home, catalog_url, extra=_cloud(s3_server, "b-bad", "upload_workers = 0"))
    with pytest.raises(ConfigError, match=r"tiers\.cloud.*upload_workers"):
        load_settings(home=home, env={})
