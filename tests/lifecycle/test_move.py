"""Safe moves between tiers: copy -> verify -> commit -> delete, and recovery."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from support.faulty_tiers import CorruptingTier

from ilm.catalog.copies import start_moves, study_copies
from ilm.lifecycle.move import move_study, recover_moves
from ilm.service import ArchiveService


def _make_study(service: ArchiveService, src: Path, tmp: Path, n: int = 12) -> str:
    ds = pydicom.dcmread(src)
    for i in range(n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.777.{i + 1}"
        p = tmp / f"{i}.dcm"
        ds.save_as(p)
        assert service.ingest_path(p).status.value == "stored"
    return str(ds.StudyInstanceUID)


def _files(service: ArchiveService, tier: str) -> dict[str, str]:
    root = service.settings.resolve(f"tiers/{tier}")
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*.dcm")}


def _locations(service: ArchiveService) -> list[tuple[str, str]]:
    with service.catalog.read() as c:
        return sorted((r[0], r[1]) for r in c.execute(sa.text("SELECT tier, state FROM locations")))


def test_move_study_to_another_tier(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid = _make_study(service, pydicom_test_files / "CT_small.dcm", tmp_path)
    before = _files(service, "hot")
    result = move_study(service.catalog, service.tier, uid, "warm")
    assert result.ok and result.moved == 12
    assert _files(service, "hot") == {}
    assert _files(service, "warm") == before  # same keys, same bytes
    assert _locations(service) == [("warm", "verified")] * 12
    d = service.study(uid)
    assert d is not None and d.summary.tiers == ("warm",) and d.checksum_state == "verified"
    with service.catalog.read() as c:
        assert c.execute(sa.text("SELECT count(*) FROM moves WHERE state='done'")).scalar_one() == 12
    again = move_study(service.catalog, service.tier, uid, "warm")
    assert again.moved == 0 and again.ok


def test_corrupt_source_is_not_moved_and_nothing_deleted(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    uid = _make_study(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
    hot = service.settings.resolve("tiers/hot")
    victim = sorted(hot.rglob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    result = move_study(service.catalog, service.tier, uid, "warm")
    assert result.moved == 2
    assert len(result.failed) == 1 and "does not match its catalog SHA-256" in result.failed[0]
    assert victim.exists()  # never deleted: it is the only copy, however damaged
    assert sorted(_locations(service)) == [("hot", "verified"), ("warm", "verified"), ("warm", "verified")]
    assert len(_files(service, "warm")) == 2


def test_recovery_rolls_back_uncommitted_copy(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    """A crash after copying but before commit: the stray copy goes, the source stays."""
    uid = _make_study(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
    with service.catalog.read() as c:
        copies = study_copies(c, uid)
    with service.catalog.write() as c:
        start_moves(c, copies, "warm", None, __import__("datetime").datetime.now())
    warm = service.tier("warm")
    for cp in copies:  # the crashed run got as far as writing the destination objects
        warm.put(cp.key, service.tier("hot").get(cp.key), cp.sha256)
    report = recover_moves(service.catalog, service.tier)
    assert report.rolled_back == 2 and not report.problems
    assert _files(service, "warm") == {}
    assert len(_files(service, "hot")) == 2
    assert _locations(service) == [("hot", "verified")] * 2


def test_recovery_finishes_committed_move(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    """A crash after commit but before the source was deleted: recovery deletes it."""
    from datetime import datetime

    from ilm.catalog.copies import commit_moves

    uid = _make_study(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
    with service.catalog.read() as c:
        copies = study_copies(c, uid)
    with service.catalog.write() as c:
        ids = start_moves(c, copies, "warm", None, datetime.now())
    for cp in copies:
        service.tier("warm").put(cp.key, service.tier("hot").get(cp.key), cp.sha256)
    with service.catalog.write() as c:
        commit_moves(c, [(i, cp, cp.sha256, cp.size) for i, cp in zip(ids, copies)], "warm", datetime.now())
    report = recover_moves(service.catalog, service.tier)
    assert report.finished == 2
    assert _files(service, "hot") == {}
    assert _locations(service) == [("warm", "verified")] * 2


def test_last_verified_copy_is_never_dropped(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    from ilm.catalog.copies import drop_location

    uid = _make_study(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=1)
    with service.catalog.read() as c:
        (cp,) = study_copies(c, uid)
    with service.catalog.write() as c:
        assert drop_location(c, cp.instance_pk, "hot") is False
    assert _locations(service) == [("hot", "verified")]


@pytest.mark.parametrize("mb_per_s", [0.0, 50.0])
def test_rate_limit_does_not_change_outcome(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path, mb_per_s: float) -> None:
    from ilm.lifecycle.limits import RateLimiter

    uid = _make_study(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=4)
    r = move_study(service.catalog, service.tier, uid, "warm", limiter=RateLimiter(mb_per_s), workers=2)
    assert r.ok and r.moved == 4


def _assert_nothing_moved(service: ArchiveService, before: dict[str, str], failed: list[str], why: str) -> None:
    """Every copy failed verification: the sources are all still there, byte for
    byte, the catalog knows only them, and the destination holds nothing."""
    assert len(failed) == len(before) and all(why in f for f in failed), failed
    assert _files(service, "hot") == before
    assert _locations(service) == [("hot", "verified")] * len(before)
    warm = service.settings.resolve("tiers/warm")
    assert not [p for p in warm.rglob("*") if p.is_file()]  # no object, no temporary file
    with service.catalog.read() as c:
        states = c.execute(sa.text("SELECT state FROM moves")).scalars().all()
    assert states and set(states) == {"rolled_back"}


def test_destination_with_other_bytes_is_detected_and_source_kept(
        service: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    """A destination that stores other bytes than it was given (a faulty tier,
    wrapped around the real one: not a file-system tier, so the copy goes
    through get + put): the verify of what it holds against the catalog's
    SHA-256 catches it, nothing is committed and no source is deleted."""
    uid = _make_study(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
    before = _files(service, "hot")
    bad = CorruptingTier(service.tier("warm"))
    result = move_study(service.catalog, lambda n: bad if n == "warm" else service.tier(n), uid, "warm")  # type: ignore[arg-type, return-value]
    assert result.moved == 0
    _assert_nothing_moved(service, before, result.failed, "holds other bytes than were written")


def test_kernel_copy_with_other_bytes_is_detected_and_source_kept(
        service: ArchiveService, pydicom_test_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File system to file system the kernel copies the file: a copy that
    comes out different (one byte changed in the destination after the kernel
    copy, before the verify) is refused, never given its name, and the source
    stays."""
    import os

    import ilm.storage.filesystem as fs

    real = fs._kernel_copy

    def faulty(src: int, dst: int) -> None:
        real(src, dst)
        os.pwrite(dst, bytes([os.pread(dst, 1, 200)[0] ^ 0xFF]), 200)

    monkeypatch.setattr(fs, "_kernel_copy", faulty)
    uid = _make_study(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
    before = _files(service, "hot")
    result = move_study(service.catalog, service.tier, uid, "warm")
    assert result.moved == 0
    _assert_nothing_moved(service, before, result.failed, "holds other bytes than its catalog SHA-256")
    monkeypatch.setattr(fs, "_kernel_copy", real)  # a sound copy then moves the study
    again = move_study(service.catalog, service.tier, uid, "warm")
    assert again.ok and again.moved == 3 and _files(service, "warm") == before and _files(service, "hot") == {}
