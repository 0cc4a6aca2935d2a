"""Immutability (WORM) per tier: read-only dated files on a file system tier,
S3 Object Lock on a real SeaweedFS server (which enforces it: a delete of a
locked version is refused), and a lifecycle that never tries to delete a
locked copy before its date. Runs on every catalog.

Time is moved by clocks (the service's and the tier's), never by sleeping;
the one wait is on a condition: the S3 server's own clock passing a
retention the test shortened as a governance administrator would.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from conftest import write_config
from support.seaweed import SeaweedFS

from ilm.cli.app import app
from ilm.config import load_settings
from ilm.errors import ConfigError, ObjectLocked
from ilm.lifecycle import retention, worm
from ilm.lifecycle.apply import apply_plan
from ilm.lifecycle.move import move_study
from ilm.lifecycle.plan import make_plan, read_policy
from ilm.service import ArchiveService
from ilm.uids import instance_key

runner = CliRunner()
RETAIN = 100  # days
# After the 30 days of the recently-accessed protection, before the lock ends.
AS_OF = date.today() + timedelta(days=60)

EXPIRE_OLD_CT = """
name: worm-test
rules:
  - id: old-ct-expires
    when:
      modality: CT
      study_age: {older_than: P10Y}
    action: expire
"""


def _ingest(service: ArchiveService, src: Path, tmp: Path, tag: int, n: int = 2, patient: str = "P1",
            first: int = 0) -> str:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.{tag}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.{tag}.1"
    ds.StudyDate = "20100301"
    ds.Modality = "CT"
    ds.PatientID = patient
    ds.PatientBirthDate = "19600101"
    for i in range(first, first + n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.{tag}.1.{i + 1}"
        p = tmp / f"{tag}-{i}.dcm"
        ds.save_as(p)
        r = service.ingest_path(p)
        assert r.status.value == "stored", r.reason
    return str(ds.StudyInstanceUID)


def _keys(study_uid: str, n: int = 2) -> list[str]:
    return [instance_key(study_uid, f"{study_uid}.1", f"{study_uid}.1.{i + 1}") for i in range(n)]


def _copies(service: ArchiveService, study_uid: str) -> list[tuple[str, str, object, object]]:
    with service.catalog.read() as conn:
        rows = conn.execute(sa.text(
            "SELECT l.tier, l.state, l.lock_mode, l.retain_until FROM locations l "
            "JOIN instances i ON i.id = l.instance_pk JOIN studies s ON s.id = i.study_pk "
            "WHERE s.study_uid = :u ORDER BY l.tier, l.id"), {"u": study_uid}).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def _state(service: ArchiveService, study_uid: str) -> str:
    with service.catalog.read() as conn:
        return str(conn.execute(sa.text("SELECT state FROM studies WHERE study_uid = :u"), {"u": study_uid}).scalar())


def _set_clock(service: ArchiveService, when: datetime) -> None:
    """Move the service's clock and the WORM tier's clock (no sleeping)."""
    service.clock = lambda: when
    for name in service.settings.tiers:
        tier = service.tier(name)
        if hasattr(tier, "clock"):
            tier.clock = lambda: when  # type: ignore[attr-defined]


# -- a file system WORM tier ------------------------------------------------------------------


@pytest.fixture
def fs_service(tmp_path: Path, catalog_url: str) -> Iterator[ArchiveService]:
    home = tmp_path / "home"
    write_config(home, catalog_url, extra=f"""
[tiers.vault]
kind = "filesystem"
path = "tiers/vault"
fsync = false
worm = "compliance"
retain_days = {RETAIN}

[ingest]
tier = "vault"
""")
    svc = ArchiveService.open(load_settings(home=home, env={}))
    try:
        yield svc
    finally:
        svc.close()


def test_files_are_written_read_only_with_their_date_and_not_deleted(
        fs_service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    before = datetime.now(timezone.utc)
    uid = _ingest(fs_service, pydicom_test_files / "CT_small.dcm", tmp_path, 201)
    root = fs_service.settings.resolve("tiers/vault")
    for key in _keys(uid):
        st = os.stat(root / key)
        assert stat.S_IMODE(st.st_mode) == 0o444
        until = datetime.fromtimestamp(st.st_mtime, timezone.utc)
        assert before + timedelta(days=RETAIN) <= until <= datetime.now(timezone.utc) + timedelta(days=RETAIN)
        with pytest.raises(ObjectLocked, match=rf"{key}.*immutable.*until"):
            fs_service.tier("vault").delete(key)
        assert (root / key).exists()
    copies = _copies(fs_service, uid)
    assert [(t, s, m) for t, s, m, _ in copies] == [("vault", "verified", "compliance")] * 2
    for *_x, until in copies:
        assert until is not None
    r = runner.invoke(app, ["show", uid, "--home", str(fs_service.settings.home)], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "Locked until" in r.output
    assert f"{datetime.now(timezone.utc) + timedelta(days=RETAIN):%Y-%m-%d}" in r.output


def test_plan_shows_the_lock_with_its_date_on_both_plan_paths(
        fs_service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid = _ingest(fs_service, pydicom_test_files / "CT_small.dcm", tmp_path, 202)
    policy = tmp_path / "p.yaml"
    policy.write_text(EXPIRE_OLD_CT)
    source = read_policy(policy, list(fs_service.settings.tiers))
    until = (datetime.now(timezone.utc) + timedelta(days=RETAIN)).date()
    for pure in (False, True):
        result = make_plan(fs_service.catalog, fs_service.settings, source, as_of=AS_OF, created_by="t", pure=pure)
        assert result.plan.summary["vetoes"] == {"worm_lock": 1}
        assert result.plan.summary["actions"] == []
        [row] = fs_service.plan_actions(result.plan.id)
        assert row.decision == "keep" and row.study_uid == uid
        assert [v["protection"] for v in row.vetoes] == ["worm_lock"]
        assert str(until) in row.reason and "locked until" in row.reason
    # ilm plan show gives it to an administrator (the table may fold the reason: read the JSON too)
    r = runner.invoke(app, ["plan", "show", result.plan.id, "--home", str(fs_service.settings.home)])
    assert r.exit_code == 0, r.output
    assert "worm_lock" in r.output and str(until) in r.output
    r = runner.invoke(app, ["plan", "show", result.plan.id, "--json", "--home", str(fs_service.settings.home)])
    [action] = json.loads(r.output)["actions"]
    assert action["reason"] == f"expiry vetoed by worm_lock (locked until {until})"
    # After the lock's date the same policy expires the study.
    after = make_plan(fs_service.catalog, fs_service.settings, source, as_of=until + timedelta(days=1), created_by="t")
    assert [a["action"] for a in after.plan.summary["actions"]] == ["expire"]


def test_apply_skips_an_expiry_whose_study_was_locked_since_the_plan(
        fs_service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    # Received on the plain hot tier, planned for expiry, then moved onto the WORM tier.
    s = fs_service.settings
    plain = ArchiveService(s.model_copy(update={"ingest": s.ingest.model_copy(update={"tier": "hot"})}))
    try:
        uid = _ingest(plain, pydicom_test_files / "CT_small.dcm", tmp_path, 203)
    finally:
        plain.close()
    policy = tmp_path / "p.yaml"
    policy.write_text(EXPIRE_OLD_CT)
    source = read_policy(policy, list(fs_service.settings.tiers))
    plan = make_plan(fs_service.catalog, fs_service.settings, source, as_of=AS_OF, created_by="t").plan
    assert [a["action"] for a in plan.summary["actions"]] == ["expire"]
    moved = move_study(fs_service.catalog, fs_service.tier, uid, "vault")
    assert moved.ok and moved.moved == 2
    report = apply_plan(fs_service.catalog, fs_service.settings, fs_service.tier, plan.id, source, approved_by="t")
    assert report.done == 0
    [(skipped, why)] = report.skipped
    assert skipped == uid and why.startswith("locked until ")
    assert _state(fs_service, uid) == "active"


def test_purge_refuses_a_locked_study_until_its_date(
        fs_service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid = _ingest(fs_service, pydicom_test_files / "CT_small.dcm", tmp_path, 204)
    assert retention.expire_study(fs_service.catalog, uid, quarantine=timedelta(0), by="t")
    root = fs_service.settings.resolve("tiers/vault")
    # Quarantine is over, the lock is not.
    _set_clock(fs_service, datetime.now(timezone.utc) + timedelta(days=RETAIN // 2))
    report = fs_service.purge("t")
    assert report.purged == []
    assert len(report.problems) == 1 and uid in report.problems[0] and "locked until" in report.problems[0]
    assert _state(fs_service, uid) == "quarantined"
    assert all((root / k).exists() for k in _keys(uid))
    # The day after the lock ends, the purge goes through.
    _set_clock(fs_service, datetime.now(timezone.utc) + timedelta(days=RETAIN + 1))
    report = fs_service.purge("t")
    assert report.purged == [uid], report.problems
    assert not any((root / k).exists() for k in _keys(uid))
    assert _state(fs_service, uid) == "None"


def test_a_move_off_a_worm_tier_keeps_the_source_until_its_date(
        fs_service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid = _ingest(fs_service, pydicom_test_files / "CT_small.dcm", tmp_path, 205)
    r = move_study(fs_service.catalog, fs_service.tier, uid, "warm")
    assert r.ok and r.moved == 2 and r.retained == 2
    assert [(t, s) for t, s, *_ in _copies(fs_service, uid)] == [("vault", "retained")] * 2 + [("warm", "verified")] * 2
    with fs_service.catalog.read() as conn:  # the study is on warm; the kept copies are not read
        assert conn.execute(sa.text("SELECT tiers FROM studies WHERE study_uid = :u"), {"u": uid}).scalar() == "warm"
    vault = fs_service.settings.resolve("tiers/vault")
    assert all((vault / k).exists() for k in _keys(uid))
    # ilm worm status says what is kept and until when.
    r = runner.invoke(app, ["worm", "status", "--json", "--home", str(fs_service.settings.home)])
    assert r.exit_code == 0, r.output
    [row] = json.loads(r.output)
    assert (row["tier"], row["worm"], row["retain_days"]) == ("vault", "compliance", RETAIN)
    assert (row["locked"], row["retained"]) == (2, 2) and row["retained_bytes"] > 0
    assert row["next_release"][:10] == f"{datetime.now(timezone.utc) + timedelta(days=RETAIN):%Y-%m-%d}"
    # A later run before the date keeps them; after it, drops them.
    assert worm.drop_released(fs_service.catalog, fs_service.tier, datetime.now(timezone.utc)).dropped == 0
    _set_clock(fs_service, datetime.now(timezone.utc) + timedelta(days=RETAIN + 1))
    report = fs_service.purge("t")  # nothing to purge; the sweep of released copies runs
    assert report.released == 2 and not report.problems
    assert [(t, s) for t, s, *_ in _copies(fs_service, uid)] == [("warm", "verified")] * 2
    assert not any((vault / k).exists() for k in _keys(uid))
    [row] = fs_service.worm_status()
    assert (row.locked, row.retained, row.next_release) == (0, 0, None)


def test_worm_options_are_checked(tmp_path: Path, catalog_url: str) -> None:
    home = tmp_path / "home"
    write_config(home, catalog_url, extra='[tiers.cold]\nkind = "filesystem"\npath = "c"\nretain_days = 30\n')
    with pytest.raises(ConfigError, match=r"tiers\.cold.*retain_days needs worm"):
        load_settings(home=home, env={})
    write_config(home, catalog_url, extra='[tiers.cold]\nkind = "filesystem"\npath = "c"\nworm = "forever"\n')
    with pytest.raises(ConfigError, match=r"tiers\.cold\.worm"):
        load_settings(home=home, env={})
    write_config(home, catalog_url,
                 extra='[tiers.cold]\nkind = "filesystem"\npath = "c"\nworm = "governance"\npack_studies = true\n')
    with pytest.raises(ConfigError, match=r"tiers\.cold.*worm and pack_studies"):
        load_settings(home=home, env={})


# -- an S3 tier with Object Lock on SeaweedFS ---------------------------------------------------


def _s3_service(tmp_path: Path, catalog_url: str, sw: SeaweedFS, *, mode: str, days: int,
                bucket: str | None = None, create: bool = True) -> tuple[ArchiveService, str]:
    bucket = bucket or sw.new_bucket_name("worm")
    home = tmp_path / "home"
    write_config(home, catalog_url, extra=f"""
[tiers.locked]
kind = "s3"
bucket = "{bucket}"
endpoint_url = "{sw.endpoint_url}"
access_key_id = "{sw.access_key}"
secret_access_key = "{sw.secret_key}"
create_bucket = {str(create).lower()}
connect_timeout_seconds = 2
max_attempts = 2
worm = "{mode}"
retain_days = {days}

[ingest]
tier = "locked"
""")
    return ArchiveService.open(load_settings(home=home, env={})), bucket


@pytest.fixture
def s3_locked(tmp_path: Path, catalog_url: str, s3_server: SeaweedFS) -> Iterator[tuple[ArchiveService, str]]:
    svc, bucket = _s3_service(tmp_path, catalog_url, s3_server, mode="compliance", days=RETAIN)
    try:
        yield svc, bucket
    finally:
        svc.close()


@pytest.mark.s3
def test_s3_objects_are_written_with_object_lock_and_the_server_refuses_their_delete(
        s3_locked: tuple[ArchiveService, str], s3_server: SeaweedFS, pydicom_test_files: Path, tmp_path: Path) -> None:
    service, bucket = s3_locked
    client = s3_server.client()
    uid = _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 301)  # creates the bucket with Object Lock
    assert client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    soon = datetime.now(timezone.utc) + timedelta(days=RETAIN)
    for key in _keys(uid):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert abs(head["ObjectLockRetainUntilDate"] - soon) < timedelta(minutes=10)
        # Not ilm's own refusal: the server's. A plain delete would only add a delete marker.
        [version] = client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
        with pytest.raises(Exception, match="AccessDenied"):
            client.delete_object(Bucket=bucket, Key=key, VersionId=version["VersionId"])
        with pytest.raises(ObjectLocked, match=rf"{key}.*locked by the store's Object Lock"):
            service.tier("locked").delete(key)
        assert client.head_object(Bucket=bucket, Key=key)["VersionId"] == version["VersionId"]  # still there
    assert {(t, m) for t, _s, m, _u in _copies(service, uid)} == {("locked", "compliance")}
    # The plan keeps it, with the date.
    policy = tmp_path / "p.yaml"
    policy.write_text(EXPIRE_OLD_CT)
    plan = service.plan(policy, as_of=AS_OF, by="t").plan
    assert plan.summary["vetoes"] == {"worm_lock": 1}


@pytest.mark.s3
def test_s3_purge_waits_for_the_servers_lock_even_when_the_catalog_date_passed(
        tmp_path: Path, catalog_url: str, s3_server: SeaweedFS, pydicom_test_files: Path) -> None:
    service, bucket = _s3_service(tmp_path, catalog_url, s3_server, mode="governance", days=1)
    try:
        uid = _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 302)
        assert retention.expire_study(service.catalog, uid, quarantine=timedelta(0), by="t")
        # ilm's clock says the lock is over; the server's does not: it refuses, nothing is lost.
        service.clock = lambda: datetime.now(timezone.utc) + timedelta(days=2)
        report = service.purge("t")
        assert report.purged == [] and "locked by the store's Object Lock" in report.problems[0]
        assert _state(service, uid) == "purging"
        # A governance administrator shortens the retention (ilm never bypasses governance itself).
        client = s3_server.client()
        end = datetime.now(timezone.utc) + timedelta(seconds=2)
        for key in _keys(uid):
            client.put_object_retention(Bucket=bucket, Key=key, BypassGovernanceRetention=True,
                                        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": end})
        deadline = time.monotonic() + 60
        while not report.purged and time.monotonic() < deadline:
            time.sleep(0.5)  # waiting on the server's clock to pass `end`: the condition is the purge itself
            report = service.purge("t")
        assert report.purged == [uid], report.problems
        for key in _keys(uid):  # every version gone, not a delete marker over a kept version
            listing = client.list_object_versions(Bucket=bucket, Prefix=key)
            assert not listing.get("Versions") and not listing.get("DeleteMarkers")
    finally:
        service.close()


@pytest.mark.s3
def test_ilm_holds_are_mirrored_to_s3_legal_holds(
        tmp_path: Path, catalog_url: str, s3_server: SeaweedFS, pydicom_test_files: Path) -> None:
    # Legal holds only (no retention date): the hold alone keeps the objects.
    service, bucket = _s3_service(tmp_path, catalog_url, s3_server, mode="governance", days=0)
    try:
        client = s3_server.client()
        a = _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 303, patient="PH")
        b = _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 304, patient="PH")
        other = _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 305, patient="PX")

        def status(uid: str) -> set[str]:
            out = set()
            for k in _keys(uid):
                try:
                    out.add(client.get_object_legal_hold(Bucket=bucket, Key=k)["LegalHold"]["Status"])
                except client.exceptions.ClientError as exc:  # never held: no legal hold configuration
                    assert "NoSuchObjectLegalHold" in str(exc)
                    out.add("OFF")
            return out

        patient_hold = service.hold_add("patient", "PH", "litigation 2026-17", "t")
        study_hold = service.hold_add("study", a, "records request", "t")
        assert status(a) == status(b) == {"ON"}
        assert status(other) == {"OFF"}
        # An instance received later for a held study is held as soon as it is stored.
        _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 304, n=1, patient="PH", first=2)
        late = instance_key(b, f"{b}.1", f"{b}.1.3")
        assert client.get_object_legal_hold(Bucket=bucket, Key=late)["LegalHold"]["Status"] == "ON"
        key = _keys(b)[0]
        with pytest.raises(ObjectLocked):
            service.tier("locked").delete(key)
        version = client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"][0]["VersionId"]
        with pytest.raises(Exception, match="AccessDenied"):
            client.delete_object(Bucket=bucket, Key=key, VersionId=version)
        # Releasing the patient hold frees b; a is still held by its own hold.
        service.hold_remove(patient_hold, "t")
        assert status(a) == {"ON"} and status(b) == {"OFF"}
        service.hold_remove(study_hold, "t")
        assert status(a) == {"OFF"}
        # ilm hold sync sets them again from the catalog (after a store was unreachable, say).
        client.put_object_legal_hold(Bucket=bucket, Key=_keys(a)[0], LegalHold={"Status": "ON"})
        r = runner.invoke(app, ["hold", "sync", "--home", str(service.settings.home)])
        assert r.exit_code == 0, r.output
        assert status(a) == {"OFF"}
        # Released: the delete goes through, every version of it.
        service.tier("locked").delete(key)
        assert not client.list_object_versions(Bucket=bucket, Prefix=key).get("Versions")
    finally:
        service.close()


@pytest.mark.s3
def test_a_worm_tier_on_a_bucket_without_object_lock_is_refused(
        tmp_path: Path, catalog_url: str, s3_server: SeaweedFS, pydicom_test_files: Path) -> None:
    bucket = s3_server.make_bucket("plain")
    service, _ = _s3_service(tmp_path, catalog_url, s3_server, mode="compliance", days=1, bucket=bucket, create=False)
    try:
        src = pydicom_test_files / "CT_small.dcm"
        r = service.ingest_path(src)
        assert r.status.value == "rejected"
        assert f"bucket {bucket!r}" in (r.reason or "") and "has no Object Lock" in (r.reason or "")
        assert not client_keys(s3_server, bucket)
    finally:
        service.close()


def client_keys(sw: SeaweedFS, bucket: str) -> list[str]:
    return [o["Key"] for o in sw.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_recovery_of_a_move_interrupted_after_commit_keeps_the_locked_source(
        fs_service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    """A crash between commit and the source's deletion: recovery finds the source locked
    and keeps it as retained, instead of failing on every later run."""
    from ilm.catalog.copies import commit_moves, start_moves, study_copies
    from ilm.lifecycle.move import recover_moves

    uid = _ingest(fs_service, pydicom_test_files / "CT_small.dcm", tmp_path, 206)
    with fs_service.catalog.read() as conn:
        copies = study_copies(conn, uid)
    warm = fs_service.tier("warm")
    now = datetime.now(timezone.utc)
    with fs_service.catalog.write() as conn:
        ids = start_moves(conn, copies, "warm", None, now)
    for c in copies:
        warm.put(c.key, fs_service.tier("vault").get(c.key), c.sha256)
    with fs_service.catalog.write() as conn:
        commit_moves(conn, [(m, c, c.sha256, c.size) for m, c in zip(ids, copies)], "warm", now)
    # -- the crash: the sources were never deleted --
    report = recover_moves(fs_service.catalog, fs_service.tier)
    assert report.finished == 2 and not report.problems
    assert [(t, s) for t, s, *_ in _copies(fs_service, uid)] == [("vault", "retained")] * 2 + [("warm", "verified")] * 2
    assert recover_moves(fs_service.catalog, fs_service.tier).finished == 0  # nothing left pending


def test_a_restored_copy_on_a_worm_tier_is_kept_until_its_lock_ends(
        tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    """Restores go to the first tier; when it is WORM, the restored copy's expiry is its lock's date
    (restored_copy_days would end first): the restore expires then, not before, and nothing is left over."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "ilm.toml").write_text(f"""
[catalog]
url = "{catalog_url}"

[tiers.hot]
kind = "filesystem"
path = "tiers/hot"
fsync = false
worm = "governance"
retain_days = 5

[tiers.warm]
kind = "filesystem"
path = "tiers/warm"
fsync = false

[tiers.vault]
kind = "filesystem"
path = "tiers/vault"
fsync = false
archive = true
retrieval_latency_seconds = 1
restored_copy_days = 2

[ingest]
tier = "warm"
""")
    service = ArchiveService.open(load_settings(home=home, env={}))
    try:
        t0 = datetime.now(timezone.utc)
        _set_clock(service, t0)
        uid = _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 207)
        assert move_study(service.catalog, service.tier, uid, "vault").ok
        [st] = service.recall([uid], "t")
        assert st.target_tier == "hot"
        done = t0 + timedelta(seconds=2)
        _set_clock(service, done)
        assert service.process_restores().completed == [uid]
        [st] = service.restores()
        assert st.expires_at == done + timedelta(days=5)  # the lock, not restored_copy_days (2)
        assert {(t, m) for t, _s, m, _u in _copies(service, uid) if t == "hot"} == {("hot", "governance")}
        hot = service.settings.resolve("tiers/hot")
        _set_clock(service, done + timedelta(days=3))  # past restored_copy_days, inside the lock
        report = service.process_restores()
        assert report.dropped == 0 and not report.problems
        assert all((hot / k).exists() for k in _keys(uid))
        _set_clock(service, done + timedelta(days=5, seconds=1))
        report = service.process_restores()
        assert report.dropped == 2 and report.expired == [uid] and not report.problems
        assert not any((hot / k).exists() for k in _keys(uid))
        assert {t for t, *_ in _copies(service, uid)} == {"vault"}
    finally:
        service.close()


@pytest.mark.s3
def test_an_object_on_a_worm_s3_tier_is_never_rewritten(
        s3_locked: tuple[ArchiveService, str], s3_server: SeaweedFS, pydicom_test_files: Path, tmp_path: Path) -> None:
    """Key rotation rewrites encrypted objects' headers with ``replace``: not on a WORM tier."""
    service, bucket = s3_locked
    uid = _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 306, n=1)
    key = _keys(uid, 1)[0]
    before = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    tier = service.tier("locked")
    with pytest.raises(ObjectLocked, match="not rewritten"):
        tier.replace(key, b"other bytes")  # type: ignore[attr-defined]
    listing = s3_server.client().list_object_versions(Bucket=bucket, Prefix=key)
    assert len(listing["Versions"]) == 1
    assert s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read() == before


def test_a_move_from_a_worm_tier_into_a_packed_tier_keeps_the_locked_sources(
        tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    home = tmp_path / "home"
    write_config(home, catalog_url, extra=f"""
[tiers.vault]
kind = "filesystem"
path = "tiers/vault"
fsync = false
worm = "compliance"
retain_days = {RETAIN}

[tiers.cold]
kind = "filesystem"
path = "tiers/cold"
fsync = false
pack_studies = true

[ingest]
tier = "vault"
""")
    service = ArchiveService.open(load_settings(home=home, env={}))
    try:
        uid = _ingest(service, pydicom_test_files / "CT_small.dcm", tmp_path, 208)
        r = move_study(service.catalog, service.tier, uid, "cold")
        assert r.ok, r.failed
        assert [(t, s) for t, s, *_ in _copies(service, uid)] == [("cold", "verified")] * 2 + [("vault", "retained")] * 2
        vault = service.settings.resolve("tiers/vault")
        assert all((vault / k).exists() for k in _keys(uid))
        assert {r.tier for r in service.instances_to_read(uid)} == {"cold"}
        _set_clock(service, datetime.now(timezone.utc) + timedelta(days=RETAIN + 1))
        assert service.purge("t").released == 2
        assert not any((vault / k).exists() for k in _keys(uid))
    finally:
        service.close()
