"""Restores from an archive tier (tape/Glacier semantics, simulated on a folder or an S3 bucket).

Time is driven through ``service.clock`` wherever possible; the few tests that
use the real clock (waiting reads, ``ilm recall --wait``, the serve worker,
SIGKILL) only bound their waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import write_config

from ilm.cli import app as cli_app
from ilm.config import Settings, load_settings
from ilm.errors import NotFound, NotReady, StorageError
from ilm.lifecycle.move import move_study
from ilm.service import ArchiveService
from ilm.web import create_app

VAULT = """
[tiers.vault]
kind = "filesystem"
path = "tiers/vault"
fsync = false
archive = true
retrieval_latency_seconds = {latency}
restored_copy_days = 2
retrieval_policy = "{policy}"
"""

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, t: datetime = T0) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)


def _settings(home: Path, catalog_url: str, *, latency: float = 1, policy: str = "never", pack: bool = False,
              extra: str = "") -> Settings:
    vault = VAULT.format(latency=latency, policy=policy) + ("pack_studies = true\n" if pack else "")
    write_config(home, catalog_url, extra=vault + extra)
    return load_settings(home=home, env={})


@pytest.fixture
def vault_settings(home: Path, catalog_url: str) -> Settings:
    return _settings(home, catalog_url)


@pytest.fixture
def svc(vault_settings: Settings) -> Iterator[ArchiveService]:
    s = ArchiveService.open(vault_settings)
    try:
        yield s
    finally:
        s.close()


def _archived_study(service: ArchiveService, src: Path, tmp: Path, n: int = 4, study: int = 1,
                    to: str = "vault") -> tuple[str, dict[str, bytes]]:
    """A study of ``n`` instances, ingested, then moved to the archive tier."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.444.{study}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.444.{study}.1"
    blobs = {}
    folder = tmp / f"study-{study}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.444.{study}.1.{i + 1}"
        ds.InstanceNumber = i + 1
        p = folder / f"{i}.dcm"
        ds.save_as(p)
        blobs[ds.SOPInstanceUID] = p.read_bytes()
    assert service.import_paths([folder]).stored == n
    uid = str(ds.StudyInstanceUID)
    if to:
        assert move_study(service.catalog, service.tier, uid, to).ok
    return uid, blobs


def _locations(service: ArchiveService) -> list[tuple[str, str, str, str]]:
    with service.catalog.read() as c:
        return sorted(tuple(r) for r in c.execute(sa.text(
            "SELECT i.sop_uid, l.tier, l.state, l.object_key FROM locations l JOIN instances i ON i.id = l.instance_pk")))


def _restores(service: ArchiveService) -> list[tuple[str, str]]:
    with service.catalog.read() as c:
        return [tuple(r) for r in c.execute(sa.text("SELECT study_uid, state FROM restores ORDER BY id"))]


def _audit_actions(service: ArchiveService, uid: str) -> list[str]:
    return [e.action for e in service.audit(study_uid=uid) if e.action.startswith("restore.")]


def _catalogued_keys(service: ArchiveService, tier: str) -> set[str]:
    with service.catalog.read() as c:
        return {r[0] for r in c.execute(sa.text("SELECT object_key FROM locations WHERE tier = :t"), {"t": tier})}


def _read_all(service: ArchiveService, uid: str) -> dict[str, bytes]:
    return {r.sop_uid: service.read(r) for r in service.instances_to_read(uid)}


# -- the whole life of a restore -------------------------------------------------


def test_recall_restore_read_expire(svc: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    clock = svc.clock = Clock()
    uid, blobs = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
    refs = svc.instances_to_read(uid)
    assert {r.tier for r in refs} == {"vault"}

    # Not readable: no restore requested, so no time to give.
    with pytest.raises(NotReady) as exc:
        svc.prepare_read(uid)
    assert exc.value.retry_after is None and "ilm recall" in str(exc.value)
    with pytest.raises(NotReady):
        svc.read(refs[0])
    assert _restores(svc) == []  # an explicit restore is needed (retrieval_policy = never)

    [st] = svc.recall([uid], "alice")
    assert st.state == "requested" and st.archive_tier == "vault" and st.target_tier == "hot"
    assert st.retry_after == pytest.approx(1.0)
    with pytest.raises(NotReady) as exc:
        svc.prepare_read(uid)
    assert exc.value.retry_after == pytest.approx(1.0)

    clock.advance(seconds=0.5)
    assert svc.process_restores().completed == []  # the archive has not released it yet
    with pytest.raises(NotReady) as exc:
        svc.prepare_read(uid)
    assert exc.value.retry_after == pytest.approx(0.5)

    clock.advance(seconds=0.6)
    report = svc.process_restores()
    assert report.completed == [uid] and not report.failed
    svc.prepare_read(uid)
    refs = svc.instances_to_read(uid)
    assert {r.tier for r in refs} == {"hot"}  # the restored copy is preferred, automatically
    assert _read_all(svc, uid) == blobs
    [st] = svc.restores()
    assert st.state == "ready" and st.retry_after == 0 and st.expires_at == clock.t + timedelta(days=2)
    assert {(t, s) for _sop, t, s, _k in _locations(svc)} == {("vault", "verified"), ("hot", "verified")}
    assert set(svc.study(uid).summary.tiers) == {"hot", "vault"}  # type: ignore[union-attr]

    # Days later: the restored copy expires; readers ignore it at once, the worker drops it.
    clock.advance(days=2, seconds=1)
    assert {r.tier for r in svc.instances_to_read(uid)} == {"vault"}
    with pytest.raises(NotReady) as exc:
        svc.prepare_read(uid)
    assert exc.value.retry_after is None
    report = svc.process_restores()
    assert report.dropped == 4 and report.expired == [uid]
    assert list(svc.tier("hot").keys()) == []
    assert {t for _sop, t, _s, _k in _locations(svc)} == {"vault"}
    for sop, _t, _s, key in _locations(svc):  # the archive copy is intact
        assert hashlib.sha256(svc.tier("vault").get(key)).hexdigest() == hashlib.sha256(blobs[sop]).hexdigest()
    assert list(svc.study(uid).summary.tiers) == ["vault"]  # type: ignore[union-attr]
    assert svc.restores() == [] and svc.restores(active_only=False)[0].state == "expired"
    assert _audit_actions(svc, uid) == ["restore.request", "restore.complete", "restore.drop"]
    assert svc.audit_verify() == []
    assert svc.process_restores().dropped == 0  # nothing left to do


def test_read_of_an_old_ref_uses_the_restored_copy(svc: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    clock = svc.clock = Clock()
    uid, blobs = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
    old = svc.instances_to_read(uid)
    svc.recall([uid], "t")
    clock.advance(seconds=2)
    svc.process_restores()
    assert {svc.read(r) for r in old} == set(blobs.values())


def test_recalls_coalesce_and_extend(svc: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    clock = svc.clock = Clock()
    uid, _ = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
    online, _ = _archived_study(svc, pydicom_test_files / "MR_small.dcm", tmp_path, n=1, study=2, to="")
    a = svc.recall([uid, uid], "a")
    clock.advance(seconds=0.4)
    b = svc.recall([uid, online], "b")
    assert len(a) == 1 and a[0].id == b[0].id and b[0].retry_after == pytest.approx(0.6)
    assert b[1].state == "online" and b[1].retry_after == 0
    assert _restores(svc) == [(uid, "requested")]
    assert _audit_actions(svc, uid) == ["restore.request"]
    clock.advance(seconds=1)
    svc.process_restores()
    first = svc.restores()[0].expires_at
    assert first is not None
    # A recall of a restored study keeps its copies longer (as S3 does); no new restore.
    clock.advance(days=1)
    [st] = svc.recall([uid], "c")
    assert st.state == "ready" and st.id == a[0].id and st.expires_at == first + timedelta(days=1)
    clock.advance(days=1, seconds=1)  # past the first expiry, before the extended one
    assert svc.process_restores().dropped == 0
    assert {r.tier for r in svc.instances_to_read(uid)} == {"hot"}
    clock.advance(days=1)
    assert svc.process_restores().dropped == 2
    assert _audit_actions(svc, uid) == ["restore.request", "restore.complete", "restore.extend", "restore.drop"]
    # After expiry a new recall starts a new restore.
    [st] = svc.recall([uid], "d")
    assert st.state == "requested" and st.id != a[0].id


def test_unknown_study_changes_nothing(svc: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid, _ = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=1)
    with pytest.raises(NotFound, match="1.2.3.4.5"):
        svc.recall([uid, "1.2.3.4.5"], "t")
    assert _restores(svc) == []


def test_unreachable_archive_fails_clearly_and_changes_nothing(svc: ArchiveService, pydicom_test_files: Path,
                                                                tmp_path: Path) -> None:
    clock = svc.clock = Clock()
    uid, blobs = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
    before = _locations(svc)
    root = svc.settings.resolve("tiers/vault")
    away = root.with_name("vault-away")
    root.rename(away)  # the archive store is gone (an unmounted share)
    # at request time: refused with the reason, nothing recorded
    with pytest.raises(StorageError, match="vault"):
        svc.recall([uid], "t")
    assert _restores(svc) == []
    # during the restore: the request fails with the reason; nothing is copied
    away.rename(root)
    svc.recall([uid], "t")
    root.rename(away)
    clock.advance(seconds=2)
    report = svc.process_restores()
    assert report.completed == [] and len(report.failed) == 1 and "vault" in report.failed[0][1]
    assert _locations(svc) == before and list(svc.tier("hot").keys()) == []
    [st] = svc.restores(active_only=False)
    assert st.state == "failed" and "missing" in st.detail and st.retry_after is None
    with pytest.raises(NotReady) as exc:
        svc.prepare_read(uid)
    assert exc.value.retry_after is None and "failed" in str(exc.value)
    assert _audit_actions(svc, uid) == ["restore.request", "restore.fail"]
    # back again: a new recall works
    away.rename(root)
    assert svc.recall([uid], "t")[0].state == "requested"
    clock.advance(seconds=2)
    assert svc.process_restores().completed == [uid]
    assert _read_all(svc, uid) == blobs


def test_corrupt_archive_object_fails_and_leaves_nothing(svc: ArchiveService, pydicom_test_files: Path,
                                                         tmp_path: Path) -> None:
    clock = svc.clock = Clock()
    uid, _ = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
    key = svc.instances_to_read(uid)[1].key
    path = svc.settings.resolve("tiers/vault") / key
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    svc.recall([uid], "t")
    clock.advance(seconds=2)
    report = svc.process_restores()
    assert len(report.failed) == 1 and "SHA-256" in report.failed[0][1]
    assert list(svc.tier("hot").keys()) == [] and {t for _s, t, _st, _k in _locations(svc)} == {"vault"}


def test_last_copy_is_never_dropped(svc: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    """A restored study promoted for good (moved to hot) loses its archive copy
    by that move; the restored copies are then the only ones and are kept."""
    clock = svc.clock = Clock()
    uid, blobs = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
    svc.recall([uid], "t")
    clock.advance(seconds=2)
    svc.process_restores()
    assert move_study(svc.catalog, svc.tier, uid, "hot").ok
    assert {t for _s, t, _st, _k in _locations(svc)} == {"hot"}
    clock.advance(days=3)
    report = svc.process_restores()
    assert report.dropped == 0 and report.kept == 2
    assert _read_all(svc, uid) == blobs
    clock.advance(days=30)
    assert svc.process_restores().kept == 0 and _read_all(svc, uid) == blobs
    assert "restore.keep" in _audit_actions(svc, uid)


def test_on_read_policy_starts_a_restore(home: Path, catalog_url: str, pydicom_test_files: Path, tmp_path: Path) -> None:
    s = ArchiveService.open(_settings(home, catalog_url, latency=30, policy="on_read"))
    try:
        clock = s.clock = Clock()
        uid, blobs = _archived_study(s, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
        with pytest.raises(NotReady) as exc:
            s.prepare_read(uid)
        assert exc.value.retry_after == pytest.approx(30)
        with pytest.raises(NotReady) as exc:  # a second read joins it
            s.prepare_read(uid)
        assert exc.value.retry_after == pytest.approx(30)
        assert _restores(s) == [(uid, "requested")]
        assert s.restores()[0].requested_by == "on-read"
        clock.advance(seconds=31)
        s.process_restores()
        s.prepare_read(uid)
        assert _read_all(s, uid) == blobs
    finally:
        s.close()


def test_prepare_read_waits_for_a_restore(home: Path, catalog_url: str, pydicom_test_files: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Real clock: a read allowed to wait finishes a restore due within its wait
    (no worker runs here); one due later fails at once, without waiting."""
    import ilm.service

    slept: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(ilm.service.time, "sleep", lambda s: (slept.append(s), real_sleep(s))[1])
    s = ArchiveService.open(_settings(home, catalog_url, latency=5))
    try:
        uid, blobs = _archived_study(s, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
        s.recall([uid], "t")
        with pytest.raises(NotReady) as refused:
            s.prepare_read(uid, wait_seconds=0.1)  # due in 5 s: no use waiting 0.1 s
        assert slept == [] and refused.value.retry_after is not None
        s.prepare_read(uid, wait_seconds=60)
        assert slept and sum(slept) < 60  # it waited for the restore, and no longer than allowed
        assert _read_all(s, uid) == blobs
    finally:
        s.close()


def test_packed_archive_study_is_restored_with_ranged_reads(home: Path, catalog_url: str, pydicom_test_files: Path,
                                                             tmp_path: Path) -> None:
    s = ArchiveService.open(_settings(home, catalog_url, pack=True))
    try:
        clock = s.clock = Clock()
        uid, blobs = _archived_study(s, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
        assert [k.endswith(".pack") for k in s.tier("vault").keys()] == [True]
        s.recall([uid], "t")
        clock.advance(seconds=2)
        assert s.process_restores().completed == [uid]
        assert {r.tier for r in s.instances_to_read(uid)} == {"hot"}
        assert _read_all(s, uid) == blobs
        assert all(k.endswith(".dcm") for k in s.tier("hot").keys())
        clock.advance(days=3)
        assert s.process_restores().dropped == 3
        assert list(s.tier("hot").keys()) == [] and len(list(s.tier("vault").keys())) == 1
    finally:
        s.close()


# -- crash safety -------------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: nothing catches it."""


def test_crash_during_restore_and_expiry_leaves_no_orphans(svc: ArchiveService, pydicom_test_files: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = svc.clock = Clock()
    uid, blobs = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=6)
    svc.recall([uid], "t")
    clock.advance(seconds=2)
    hot = svc.tier("hot")
    real_put, real_copy_in, real_delete = hot.put, hot.copy_in, hot.delete  # type: ignore[attr-defined]
    lock = threading.Lock()
    count = {"put": 0, "delete": 0}

    def dying() -> None:
        with lock:
            count["put"] += 1
            if count["put"] > 3:
                raise Crash()

    def dying_put(key: str, data: bytes, sha256: str | None = None) -> object:
        dying()
        return real_put(key, data, sha256)

    def dying_copy_in(key: str, source: object, sha256: str) -> object:  # folder -> folder: the kernel copies
        dying()
        return real_copy_in(key, source, sha256)

    monkeypatch.setattr(hot, "put", dying_put)
    monkeypatch.setattr(hot, "copy_in", dying_copy_in)
    with pytest.raises(Crash):
        svc.process_restores()
    monkeypatch.setattr(hot, "put", real_put)
    monkeypatch.setattr(hot, "copy_in", real_copy_in)
    assert len(list(hot.keys())) == 3 and _catalogued_keys(svc, "hot") == set()  # orphans, for now
    with pytest.raises(NotReady):
        svc.prepare_read(uid)
    report = svc.process_restores()  # the re-run adopts what the killed run wrote
    assert report.completed == [uid]
    assert set(hot.keys()) == _catalogued_keys(svc, "hot") and len(_catalogued_keys(svc, "hot")) == 6
    assert _read_all(svc, uid) == blobs

    def dying_delete(key: str) -> None:
        with lock:
            count["delete"] += 1
            if count["delete"] > 2:
                raise Crash()
        real_delete(key)

    clock.advance(days=3)
    monkeypatch.setattr(hot, "delete", dying_delete)
    with pytest.raises(Crash):
        svc.process_restores()
    monkeypatch.setattr(hot, "delete", real_delete)
    # half dropped: no reader uses a copy being dropped, every row still names its object or is 'deleting'
    assert {r.tier for r in svc.instances_to_read(uid)} == {"vault"}
    report = svc.process_restores()
    assert report.dropped == 6 and report.expired == [uid]
    assert list(hot.keys()) == [] and _catalogued_keys(svc, "hot") == set()
    assert {t for _s, t, _st, _k in _locations(svc)} == {"vault"}


_WORKER = """
import sys, threading, time
from datetime import datetime, timedelta, timezone
from ilm.config import load_settings
from ilm.service import ArchiveService
from pathlib import Path

service = ArchiveService.open(load_settings(home=Path(sys.argv[1]), env={}))
service.clock = lambda: datetime.now(timezone.utc) + timedelta(seconds=5)
hot = service.tier("hot")
put = hot.put
stop_after = int(sys.argv[2])  # copies written before every further put hangs (the test kills us then)
lock, written = threading.Lock(), [0]
copy_in = hot.copy_in

def hang_after_enough():
    with lock:
        n = written[0] = written[0] + 1
    if n > stop_after:
        if n == stop_after + 1:
            print("stuck", flush=True)
        time.sleep(3600)

def hanging_put(key, data, sha256=None):
    hang_after_enough()
    return put(key, data, sha256)

def hanging_copy_in(key, source, sha256):  # folder -> folder copies go through the kernel, not put
    hang_after_enough()
    return copy_in(key, source, sha256)

hot.put, hot.copy_in = hanging_put, hanging_copy_in
print("copying", flush=True)
service.process_restores()
print("done", flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_process_restores_leaves_no_orphans(home: Path, catalog_url: str, pydicom_test_files: Path,
                                                           tmp_path: Path) -> None:
    """A real process running the restore worker step is killed with SIGKILL
    while it copies (after a random number of copies); a re-run catalogues
    everything the killed run wrote."""
    settings = _settings(home, catalog_url, latency=0.2)
    s = ArchiveService.open(settings)
    rng = random.Random(4)
    killed_mid_copy = 0
    try:
        for round_ in range(5):
            uid, blobs = _archived_study(s, pydicom_test_files / "CT_small.dcm", tmp_path, n=80, study=10 + round_)
            s.recall([uid], "t")
            # killed after a random number of the 80 copies, whatever the machine's load
            proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(home), str(rng.randint(1, 60))],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"copying"
            assert proc.stdout.readline().strip() == b"stuck"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            on_hot = set(s.tier("hot").keys())
            if on_hot - _catalogued_keys(s, "hot"):
                killed_mid_copy += 1  # orphans, for now
            s.clock = lambda: datetime.now(timezone.utc) + timedelta(seconds=5)
            report = s.process_restores()
            assert report.completed == [uid] and not report.failed
            assert set(s.tier("hot").keys()) == _catalogued_keys(s, "hot")
            assert _read_all(s, uid) == blobs
            s.clock = lambda: datetime.now(timezone.utc)
        assert killed_mid_copy >= 3
    finally:
        s.close()


@pytest.mark.slow
def test_a_restore_another_process_is_copying_is_left_to_it(home: Path, catalog_url: str, pydicom_test_files: Path,
                                                           tmp_path: Path) -> None:
    """Two workers (``ilm serve``'s and an ``ilm recall --wait``) never copy the same restore at
    once: while a live process holds the lease, another run leaves the restore to it and removes
    nothing it wrote; when that process is killed, the next run takes over at once (same host:
    the owner's process is gone) and adopts what was written."""
    settings = _settings(home, catalog_url, latency=0.2)
    s = ArchiveService.open(settings)
    proc = None
    try:
        uid, blobs = _archived_study(s, pydicom_test_files / "CT_small.dcm", tmp_path, n=20, study=30)
        s.recall([uid], "t")
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(home), "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"copying"
        assert proc.stdout.readline().strip() == b"stuck"  # alive, holding the lease, 5 copies written
        written = set(s.tier("hot").keys())
        assert written
        s.clock = lambda: datetime.now(timezone.utc) + timedelta(seconds=5)
        report = s.process_restores()
        assert report.completed == [] and report.failed == [] and report.waiting == [uid]
        assert written <= set(s.tier("hot").keys())  # nothing of the live worker's was removed
        with s.catalog.read() as conn:
            owner, state = conn.execute(sa.text("SELECT lease_owner, state FROM restores")).one()
        assert owner.split(":")[1] == str(proc.pid) and state == "restoring"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        report = s.process_restores()
        assert report.completed == [uid] and not report.failed
        assert set(s.tier("hot").keys()) == _catalogued_keys(s, "hot")
        assert _read_all(s, uid) == blobs
        with s.catalog.read() as conn:
            assert conn.execute(sa.text("SELECT lease_owner, lease_until FROM restores")).one() == ("", None)
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        s.close()


def test_a_lease_from_another_host_holds_until_it_lapses(svc: ArchiveService, pydicom_test_files: Path,
                                                         tmp_path: Path) -> None:
    """A worker on another host cannot be asked whether it runs: its lease holds until its time."""
    clock = svc.clock = Clock()
    uid, blobs = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
    svc.recall([uid], "t")
    clock.advance(seconds=2)
    now = clock()

    def lease(until: datetime) -> None:
        with svc.catalog.write() as conn:
            conn.execute(sa.text("UPDATE restores SET state = 'restoring', lease_owner = 'archive-node-2:4242:ab12', "
                                 "lease_until = :u"), {"u": until})

    lease(now + timedelta(minutes=5))
    report = svc.process_restores()
    assert report.waiting == [uid] and report.completed == []
    assert not _catalogued_keys(svc, "hot") and not set(svc.tier("hot").keys())
    lease(now - timedelta(seconds=1))  # lapsed: that worker stopped renewing it
    report = svc.process_restores()
    assert report.completed == [uid]
    assert _read_all(svc, uid) == blobs


def test_lease_owner_liveness() -> None:
    from ilm.lifecycle.lease import new_owner, owner_alive

    me = new_owner()
    assert owner_alive(me) and me != new_owner()  # each claim is its own owner
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = me.rsplit(":", 2)[0]
    assert not owner_alive(f"{host}:{gone.pid}:x")  # this host, process gone
    assert owner_alive(f"another-host:{gone.pid}:x")  # elsewhere: only the lease's time decides
    assert owner_alive("not an owner id")


# -- S3 as the archive store -----------------------------------------------------------


@pytest.mark.s3
def test_s3_archive_store_restore_and_outage(home: Path, catalog_url: str, s3_server: object,
                                             pydicom_test_files: Path, tmp_path: Path) -> None:
    sw = s3_server
    extra = f"""
[tiers.glacier]
kind = "s3"
bucket = "{sw.new_bucket_name('glacier')}"  # type: ignore[attr-defined]
endpoint_url = "{sw.endpoint_url}"
access_key_id = "{sw.access_key}"
secret_access_key = "{sw.secret_key}"
create_bucket = true
connect_timeout_seconds = 1
max_attempts = 1
archive = true
retrieval_latency_seconds = 5
restored_copy_days = 1
"""
    extra = extra.replace("  # type: ignore[attr-defined]", "")
    s = ArchiveService.open(_settings(home, catalog_url, extra=extra))
    try:
        clock = s.clock = Clock()
        uid, blobs = _archived_study(s, pydicom_test_files / "CT_small.dcm", tmp_path, n=3, to="glacier")
        before = _locations(s)
        with sw.down():  # type: ignore[attr-defined]
            with pytest.raises(StorageError, match="unreachable"):
                s.recall([uid], "t")
        assert _restores(s) == [] and _locations(s) == before
        [st] = s.recall([uid], "t")
        assert st.archive_tier == "glacier" and st.retry_after == pytest.approx(5)
        clock.advance(seconds=6)
        with sw.down():  # type: ignore[attr-defined]
            report = s.process_restores()
        assert len(report.failed) == 1 and "unreachable" in report.failed[0][1]
        assert _locations(s) == before and list(s.tier("hot").keys()) == []
        s.recall([uid], "t")
        clock.advance(seconds=6)
        assert s.process_restores().completed == [uid]
        assert _read_all(s, uid) == blobs
        clock.advance(days=1, seconds=1)
        assert s.process_restores().dropped == 3
        assert _locations(s) == before
    finally:
        s.close()


# -- front-ends -------------------------------------------------------------------------


def test_rest_api(svc: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    clock = svc.clock = Clock()
    uid, _ = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
    client = TestClient(create_app(svc, auth=False))
    r = client.post("/api/restores", json={"study_uids": [uid], "requested_by": "viewer-7"})
    assert r.status_code == 202, r.text
    [st] = r.json()["restores"]
    assert st["state"] == "requested" and st["retry_after"] == pytest.approx(1) and st["requested_by"] == "viewer-7"
    assert r.headers["retry-after"] == "1"
    r2 = client.post("/api/restores", json={"study_uids": [uid]})
    assert r2.status_code == 202 and r2.json()["restores"][0]["id"] == st["id"]
    assert client.post("/api/restores", json={"study_uids": ["1.2.3.999"]}).status_code == 404
    assert client.post("/api/restores", json={"study_uids": []}).status_code == 422
    assert client.post("/api/restores", json={"uids": [uid]}).status_code == 422
    got = client.get("/api/restores").json()["restores"]
    assert [g["study_uid"] for g in got] == [uid]
    clock.advance(seconds=2)
    svc.process_restores()
    got = client.get("/api/restores", params={"study_uid": uid}).json()["restores"]
    assert got[0]["state"] == "ready" and got[0]["expires_at"].startswith("2030-01-03")
    clock.advance(days=3)
    svc.process_restores()
    assert client.get("/api/restores").json()["restores"] == []
    assert client.get("/api/restores", params={"all": "true"}).json()["restores"][0]["state"] == "expired"


runner = CliRunner(env={"COLUMNS": "250"})


def test_cli_recall_and_restores(vault_settings: Settings, pydicom_test_files: Path, tmp_path: Path) -> None:
    s = ArchiveService.open(vault_settings)
    try:
        uid, blobs = _archived_study(s, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
        uid2, _ = _archived_study(s, pydicom_test_files / "CT_small.dcm", tmp_path, n=1, study=2)
    finally:
        s.close()
    home = str(vault_settings.home)
    r = runner.invoke(cli_app, ["recall", uid, "--json", "--home", home])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["state"] == "requested"
    r = runner.invoke(cli_app, ["restores", "--home", home])
    # The table folds long UIDs to the terminal's width (80 columns without a terminal): check the JSON for the UID.
    assert r.exit_code == 0 and "1 restores" in r.output
    r = runner.invoke(cli_app, ["restores", "--json", "--home", home])
    assert [(x["study_uid"], x["state"]) for x in json.loads(r.output)] == [(uid, "requested")]
    r = runner.invoke(cli_app, ["recall", uid, uid2, "--wait", "--timeout", "20", "--home", home])
    assert r.exit_code == 0, r.output
    assert r.output.count("ready") == 2
    r = runner.invoke(cli_app, ["restores", "--json", "--home", home])
    assert {x["study_uid"]: x["state"] for x in json.loads(r.output)} == {uid: "ready", uid2: "ready"}
    r = runner.invoke(cli_app, ["recall", "1.2.3.999", "--home", home])
    assert r.exit_code == 1 and "1.2.3.999" in r.output
    s = ArchiveService.open(vault_settings)
    try:
        assert _read_all(s, uid) == blobs
    finally:
        s.close()


def test_cli_recall_wait_timeout(home: Path, catalog_url: str, pydicom_test_files: Path, tmp_path: Path) -> None:
    settings = _settings(home, catalog_url, latency=3600)
    s = ArchiveService.open(settings)
    try:
        uid, _ = _archived_study(s, pydicom_test_files / "CT_small.dcm", tmp_path, n=1)
    finally:
        s.close()
    r = runner.invoke(cli_app, ["recall", uid, "--wait", "--timeout", "0.5", "--home", str(home)])
    assert r.exit_code == 1 and "timed out" in r.output


def test_serve_restore_worker(svc: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    from ilm.cli.serve import _start_restore_worker

    uid, blobs = _archived_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
    stop = threading.Event()
    worker = _start_restore_worker(svc, stop, interval=0.1)
    assert worker is not None
    try:
        svc.recall([uid], "t")
        deadline = time.monotonic() + 15
        while svc.restores()[0].state != "ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.restores()[0].state == "ready"
        assert _read_all(svc, uid) == blobs
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not worker.is_alive()


def test_no_worker_without_archive_tier(service: ArchiveService) -> None:
    from ilm.cli.serve import _start_restore_worker

    assert _start_restore_worker(service, threading.Event()) is None
