"""Master-key rotation and retirement (ilm keys) over a real catalog (SQLite and
PostgreSQL) and an encrypted tier on a file system and on SeaweedFS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_config
from support.seaweed import SeaweedFS

from ilm.cli import app
from ilm.config import load_settings
from ilm.encryption import KeyInUse
from ilm.errors import ConfigError, TierUnavailable
from ilm.keyring import KeyRing
from ilm.models import StudyFilter
from ilm.service import ArchiveService
from ilm.storage import envelope
from ilm.storage.encrypted import EncryptedTier

SOURCES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"]


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.s3)])
def home(request: pytest.FixtureRequest, tmp_path: Path, catalog_url: str) -> Path:
    """An archive whose ingest tier 'safe' is encrypted (a folder, or a SeaweedFS bucket), with key k1."""
    home = tmp_path / "home"
    if request.param == "filesystem":
        tier = 'kind = "filesystem"\npath = "tiers/safe"\nfsync = false'
    else:
        sw: SeaweedFS = request.getfixturevalue("s3_server")
        tier = (f'kind = "s3"\nbucket = "{sw.new_bucket_name("keys")}"\nendpoint_url = "{sw.endpoint_url}"\n'
                f'access_key_id = "{sw.access_key}"\nsecret_access_key = "{sw.secret_key}"\ncreate_bucket = true')
    write_config(home, catalog_url, f'[tiers.safe]\n{tier}\nencryption = "envelope"\n\n[ingest]\ntier = "safe"\n')
    KeyRing(home / "keyring.toml").add("k1")
    return home


@pytest.fixture
def service(home: Path) -> Iterator[ArchiveService]:
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        yield svc
    finally:
        svc.close()


def _ingest(service: ArchiveService, files: Path) -> dict[str, bytes]:
    """Ingest the sources; SOP Instance UID -> the bytes sent."""
    import pydicom

    sent = {}
    for name in SOURCES:
        path = files / name
        assert service.ingest_path(path).status.value == "stored"
        sent[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path.read_bytes()
    return sent


def _safe(service: ArchiveService) -> EncryptedTier:
    t = service.tier("safe")
    assert isinstance(t, EncryptedTier)
    return t


def _stored(service: ArchiveService) -> dict[str, bytes]:
    """Every object of the tier as stored (ciphertext), by key."""
    t = _safe(service)
    return {k: t.inner.get(k) for k in t.keys()}


def _read_all(service: ArchiveService, sent: dict[str, bytes]) -> None:
    """Every instance reads back through the service as the bytes that were sent."""
    got = {r.sop_uid: service.read(r) for s in service.studies(StudyFilter()) for r in service.instances_to_read(s.study_instance_uid)}
    assert got == sent


def test_rotate_rewraps_without_reencrypting_then_retire(service: ArchiveService, pydicom_test_files: Path) -> None:
    sent = _ingest(service, pydicom_test_files)
    before = _stored(service)
    assert len(before) == len(SOURCES) and all(_safe(service).key_id(k) == "k1" for k in before)

    service.keys_new(key_id="k2", by="test")
    assert _safe(service).ring.active_id == "k2"  # the open tier sees the new key without a restart
    with pytest.raises(KeyInUse, match=r"key 'k1' still wraps 4 objects \(tier 'safe': 4\)"):
        service.keys_retire("k1", by="test")
    assert not any(k.retired for k in KeyRing(service.settings.home / "keyring.toml").keys())

    seen: list[tuple[int, int]] = []
    report = service.keys_rotate(by="test", progress=lambda done, total: seen.append((done, total)))
    assert (report.objects, report.rewrapped, report.already, report.failed) == (4, 4, 0, [])
    assert report.from_keys == {"k1": 4} and report.to == {"safe": "k2"}
    assert seen[-1] == (4, 4)
    after = _stored(service)
    for key, blob in before.items():
        # Same data key, same segments: only the master key id and wrapped key (bytes 16-88) changed.
        assert after[key][envelope.HEADER_SIZE:] == blob[envelope.HEADER_SIZE:]
        assert after[key][:16] == blob[:16] and after[key][16:88] != blob[16:88]
        assert _safe(service).key_id(key) == "k2"
    _read_all(service, sent)
    infos, unchecked = service.keys_list()
    assert {k.id: (k.active, k.objects) for k in infos} == {"k1": (False, {"safe": 0}), "k2": (True, {"safe": 4})}
    assert unchecked == {"safe": 0}

    # Nothing uses k1 any more: it is retired, and what was written under it is still read (k2).
    assert service.keys_retire("k1", by="test") == 4
    assert [k.retired for k in KeyRing(service.settings.home / "keyring.toml").keys()] == [True, False]
    _read_all(service, sent)
    with pytest.raises(ConfigError, match="active key"):
        service.keys_retire("k2", by="test")
    actions = [e.action for e in service.audit()]
    assert {"key-new", "keys-rotate", "key-retire"} <= set(actions)


def test_rotation_resumes_after_a_failure(service: ArchiveService, pydicom_test_files: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _ingest(service, pydicom_test_files)
    service.keys_new(key_id="k2")
    real = EncryptedTier.rewrap
    calls: list[str] = []
    fail = [True]

    def flaky(self: EncryptedTier, key: str, to: object) -> str:
        calls.append(key)
        if len(calls) == 2 and fail:
            fail.clear()  # the store fails once, on the second object
            raise TierUnavailable(f"tier 'safe': {key}: the store went away")
        return real(self, key, to)  # type: ignore[arg-type]

    monkeypatch.setattr(EncryptedTier, "rewrap", flaky)
    first = service.keys_rotate()
    assert first.rewrapped == 3 and len(first.failed) == 1 and "went away" in first.failed[0]
    failed_key = calls[1]
    calls.clear()
    second = service.keys_rotate()  # resumes: only the one left is read again
    assert calls == [failed_key]
    assert (second.rewrapped, second.already, second.failed) == (1, 3, [])
    calls.clear()
    third = service.keys_rotate()  # idempotent: nothing to do, nothing read
    assert calls == [] and (third.rewrapped, third.already) == (0, 4)
    full = service.keys_rotate(full=True)  # --full reads every header again, changes nothing
    assert len(calls) == 4 and (full.rewrapped, full.already) == (0, 4)
    _read_all(service, sent)
    assert service.keys_retire("k1") == 4


def test_retire_refuses_an_object_written_under_the_old_key_after_rotation(
        service: ArchiveService, pydicom_test_files: Path, home: Path) -> None:
    """A process that still had the old ring active (or a record gone stale) wrote
    under k1 after the rotation: retire reads every header, so it still refuses."""
    sent = _ingest(service, pydicom_test_files)
    service.keys_new(key_id="k2")
    service.keys_rotate()
    # Rewrap one object back to k1 behind the catalog's back.
    safe = _safe(service)
    key = next(iter(safe.keys()))
    old = [k for k in safe.ring.keys() if k.id == "k1"][0]
    safe.rewrap(key, old)
    with pytest.raises(KeyInUse, match="still wraps 1 objects"):
        service.keys_retire("k1")
    assert service.keys_rotate().rewrapped == 1  # retire recorded what it saw: rotate fixes it
    assert service.keys_retire("k1") == 4
    _read_all(service, sent)


def test_keys_cli(home: Path, pydicom_test_files: Path) -> None:
    runner = CliRunner()
    env = {"ILM_HOME": str(home)}
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        _ingest(svc, pydicom_test_files)
    finally:
        svc.close()
    r = runner.invoke(app, ["keys", "new", "--id", "k2", "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["id"] == "k2"
    r = runner.invoke(app, ["keys", "new", "--id", "k2"], env=env)
    assert r.exit_code == 2 and "exists already" in r.output
    r = runner.invoke(app, ["keys", "retire", "k1"], env=env)
    assert r.exit_code == 1 and "still wraps 4 objects" in r.output
    r = runner.invoke(app, ["keys", "rotate", "--json"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rewrapped"] == 4
    r = runner.invoke(app, ["keys", "list", "--json"], env=env)
    keys = {k["id"]: k for k in json.loads(r.stdout)["keys"]}
    assert keys["k2"]["active"] and keys["k2"]["objects"] == {"safe": 4} and keys["k1"]["objects"] == {"safe": 0}
    r = runner.invoke(app, ["keys", "retire", "k1"], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["keys", "retire", "nosuch"], env=env)
    assert r.exit_code == 2 and "no master key 'nosuch'" in r.output
    r = runner.invoke(app, ["keys", "rotate", "--tier", "hot"], env=env)
    assert r.exit_code == 2 and "tier 'hot' is not encrypted" in r.output


def test_verify_finds_a_changed_byte_on_the_encrypted_tier(service: ArchiveService, pydicom_test_files: Path) -> None:
    """ilm verify decrypts each copy: every tag and the image's SHA-256 are checked,
    and a changed byte in the stored ciphertext is a bad copy."""
    _ingest(service, pydicom_test_files)
    report = service.verify(tier="safe", repair=False)
    assert (report.objects, report.ok, report.bad) == (4, 4, 0)
    safe = _safe(service)
    key = sorted(safe.keys())[0]
    blob = safe.inner.get(key)
    safe.inner.replace(key, blob[:200] + bytes([blob[200] ^ 4]) + blob[201:])
    report = service.verify(tier="safe", repair=False)
    assert (report.ok, report.bad) == (3, 1)
    assert any("integrity failure" in p for p in map(str, report.problems))


def test_restore_from_an_encrypted_archive_tier(tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    """A study moved onto an encrypted archive tier (tape/Glacier semantics) and
    restored onto the encrypted hot tier reads back as it was sent; the restored
    copy is encrypted too, and the archive copy stays."""
    from datetime import datetime, timedelta, timezone

    from ilm.lifecycle.move import move_study

    home = tmp_path / "home"
    write_config(home, catalog_url, '[tiers.vault]\nkind = "filesystem"\npath = "tiers/vault"\nfsync = false\n'
                 'archive = true\nretrieval_latency_seconds = 60\nencryption = "envelope"\n')
    text = (home / "ilm.toml").read_text().replace('path = "tiers/hot"\n', 'path = "tiers/hot"\nencryption = "envelope"\n')
    (home / "ilm.toml").write_text(text)
    KeyRing(home / "keyring.toml").add("k1")
    svc = ArchiveService.open(load_settings(home=home, env={}))
    now = [datetime(2030, 1, 1, tzinfo=timezone.utc)]
    svc.clock = lambda: now[0]
    try:
        sent = _ingest(svc, pydicom_test_files)
        uids = [s.study_instance_uid for s in svc.studies(StudyFilter())]
        for uid in uids:
            assert move_study(svc.catalog, svc.tier, uid, "vault").ok
        vault = svc.tier("vault")
        assert isinstance(vault, EncryptedTier) and all(vault.inner.get(k).startswith(b"ILMENC") for k in vault.keys())
        svc.recall(uids, "test")
        now[0] += timedelta(seconds=61)
        assert len(svc.process_restores().completed) == len(uids)
        refs = [r for uid in uids for r in svc.instances_to_read(uid)]
        assert {r.tier for r in refs} == {"hot"}
        assert {r.sop_uid: svc.read(r) for r in refs} == sent
        hot = _safe_named(svc, "hot")
        assert sorted(hot.keys()) == sorted(vault.keys())
        assert all(hot.inner.get(k).startswith(b"ILMENC") for k in hot.keys())
    finally:
        svc.close()


def _safe_named(service: ArchiveService, name: str) -> EncryptedTier:
    t = service.tier(name)
    assert isinstance(t, EncryptedTier)
    return t


def test_rotation_leaves_a_worm_tier_alone_and_says_so(tmp_path: Path, catalog_url: str,
                                                       pydicom_test_files: Path) -> None:
    home = tmp_path / "home"
    write_config(home, catalog_url, '[tiers.safe]\nkind = "filesystem"\npath = "tiers/safe"\nfsync = false\n'
                 'encryption = "envelope"\nworm = "compliance"\nretain_days = 30\n\n[ingest]\ntier = "safe"\n')
    KeyRing(home / "keyring.toml").add("k1")
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        sent = _ingest(svc, pydicom_test_files)
        before = _stored(svc)
        svc.keys_new(key_id="k2")
        report = svc.keys_rotate()
        assert report.rewrapped == 0 and len(report.failed) == 1 and "worm = 'compliance'" in report.failed[0]
        assert _stored(svc) == before  # not a byte changed
        _read_all(svc, sent)
        with pytest.raises(KeyInUse, match="still wraps 4 objects"):
            svc.keys_retire("k1")
    finally:
        svc.close()
