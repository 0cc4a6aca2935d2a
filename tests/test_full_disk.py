"""A full disk never makes ingest fail while a lower tier has room.

The ingest tier lives on a real, small file system (a 1 MiB tmpfs mounted for
the test: this needs root, as in the project's sandbox and CI; without it the
real-disk tests are skipped and the simulated one still runs). Instances keep
arriving after it is full: each is stored on the next tier down, catalogued
there, readable, and the spill is audited.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from conftest import write_config

from ilm.config import load_settings
from ilm.errors import TierFull
from ilm.models import IngestStatus
from ilm.service import ArchiveService
from ilm.storage import FilesystemTier


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system, mounted for this test and unmounted after it."""
    where = tmp_path / "small-disk"
    if not _mount_tmpfs(where, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root): the simulated full-disk test covers the logic")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _datasets(src: Path, tmp: Path, n: int, study: str = "1.2.826.0.1.3680043.10.66") -> list[Path]:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = study + ".1"
    out = []
    folder = tmp / f"in-{study}"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        ds.SOPInstanceUID = f"{study}.1.{i + 1}"
        p = folder / f"{i}.dcm"
        ds.save_as(p)
        out.append(p)
    return out


def _tiers_of(service: ArchiveService) -> dict[str, str]:
    with service.catalog.read() as c:
        return {r[0]: r[1] for r in c.execute(sa.text(
            "SELECT i.sop_uid, l.tier FROM locations l JOIN instances i ON i.id = l.instance_pk"))}


def test_ingest_spills_to_the_next_tier_when_the_disk_is_full(tmp_path: Path, catalog_url: str, small_disk: Path,
                                                              pydicom_test_files: Path) -> None:
    home = tmp_path / "home"
    write_config(home, catalog_url)
    toml = (home / "ilm.toml").read_text().replace('path = "tiers/hot"', f'path = "{small_disk}"')
    (home / "ilm.toml").write_text(toml)
    service = ArchiveService.open(load_settings(home=home, env={}))
    try:
        files = _datasets(pydicom_test_files / "CT_small.dcm", tmp_path, 150)  # ~40 KB each: ~6 MB, the disk has 1
        results = [service.ingest_path(p) for p in files]
        assert [r.status for r in results] == [IngestStatus.STORED] * len(files), [r.reason for r in results][-3:]
        where = _tiers_of(service)
        on_hot = [u for u, t in where.items() if t == "hot"]
        on_warm = [u for u, t in where.items() if t == "warm"]
        assert on_hot and on_warm and len(on_hot) + len(on_warm) == len(files)
        # The small disk really is full, and nothing half-written stays on it.
        st = os.statvfs(small_disk)
        assert st.f_bavail * st.f_frsize < 45_000
        assert not [p for p in small_disk.rglob(".tmp-*")]
        # Every instance reads back from where the catalog says it is.
        study = "1.2.826.0.1.3680043.10.66"
        refs = service.instances_to_read(study)
        assert len(refs) == len(files)
        originals = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in files}
        assert all(service.read(r) == originals[r.sop_uid] for r in refs)
        detail = service.study(study)
        assert detail is not None and set(detail.summary.tiers) == {"hot", "warm"}
        # Audited once per study and tier, naming the full tier and the reason.
        spills = [e for e in service.audit(study_uid=study) if e.action == "ingest.spill"]
        assert len(spills) == 1
        assert spills[0].detail["ingest_tier"] == "hot" and spills[0].detail["stored_on"] == "warm"
        assert "disk full" in spills[0].detail["reason"]
        # A re-send of a spilled instance is a duplicate, not a second copy.
        again = service.ingest_path(files[-1])
        assert again.status is IngestStatus.DUPLICATE
        assert len(_tiers_of(service)) == len(files)
    finally:
        service.close()


def test_ingest_is_refused_as_retryable_when_no_lower_tier_has_room(tmp_path: Path, catalog_url: str,
                                                                   small_disk: Path, pydicom_test_files: Path) -> None:
    """Only an archive tier below: an instance just received must be readable, so it is not put there."""
    home = tmp_path / "home"
    write_config(home, catalog_url, extra="""
[tiers.tape]
kind = "filesystem"
path = "tiers/tape"
archive = true
""")
    toml = (home / "ilm.toml").read_text()
    toml = toml.replace('path = "tiers/hot"', f'path = "{small_disk}/hot"')
    toml = toml.replace('path = "tiers/warm"', f'path = "{small_disk}/warm"')  # the same full disk
    (home / "ilm.toml").write_text(toml)
    service = ArchiveService.open(load_settings(home=home, env={}))
    try:
        results = [service.ingest_path(p) for p in _datasets(pydicom_test_files / "CT_small.dcm", tmp_path, 60)]
        refused = [r for r in results if r.status is IngestStatus.REJECTED]
        assert refused, "the disk never filled up"
        assert all(r.retryable and "disk full" in r.reason and "no lower tier has room" in r.reason for r in refused)
        assert set(_tiers_of(service).values()) <= {"hot", "warm"}  # never the archive tier
        assert not list((home / "tiers" / "tape").rglob("*.dcm"))
        stored = [r for r in results if r.status is IngestStatus.STORED]
        assert len(_tiers_of(service)) == len(stored)  # nothing refused is catalogued
    finally:
        service.close()


def test_filesystem_tier_reports_enospc_as_tier_full(small_disk: Path) -> None:
    t = FilesystemTier("hot", small_disk, fsync=False)
    with pytest.raises(TierFull, match="tier 'hot': disk full writing 1.2/3.dcm"):
        t.put("1.2/3.dcm", b"x" * 2_000_000)
    assert list(t.keys()) == [] and not list(small_disk.rglob("*"))[1:]


def test_spill_with_a_simulated_full_disk(service: ArchiveService, pydicom_test_files: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The same logic without root: the hot tier's writes fail with ENOSPC from the OS call itself."""
    hot = service.tier("hot")
    assert isinstance(hot, FilesystemTier)
    real_write = os.write
    hot_root = str(hot.root)
    full_fds: set[int] = set()
    real_open = os.open

    def tracking_open(path: object, flags: int, *a: object) -> int:
        fd = real_open(path, flags, *a)  # type: ignore[arg-type]
        if str(path).startswith(hot_root):
            full_fds.add(fd)
        else:
            full_fds.discard(fd)  # numbers are reused after close
        return fd

    def enospc_write(fd: int, data: object) -> int:
        if fd in full_fds:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "write", enospc_write)
    files = _datasets(pydicom_test_files / "CT_small.dcm", tmp_path, 3)
    results = [service.ingest_path(p) for p in files]
    monkeypatch.undo()
    assert [r.status for r in results] == [IngestStatus.STORED] * 3
    assert set(_tiers_of(service).values()) == {"warm"}
    assert not list(hot.root.rglob("*.dcm")) and not list(hot.root.rglob(".tmp-*"))
    refs = service.instances_to_read("1.2.826.0.1.3680043.10.66")
    assert {service.read(r) for r in refs} == {p.read_bytes() for p in files}
