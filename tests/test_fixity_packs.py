"""Fixity repair inside packed studies: a bad or missing member of a pack is repaired by
writing a new pack from verified bytes (ilm.fixity.repack), on a filesystem tier and on
SeaweedFS, both catalogs; a member without a verified source is marked, reported and
nothing is deleted; a crash before or after the switch is finished by recovery.

The study is ingested on 'hot', which keeps replicas on 'mirror'; moving it to the
packing tier leaves the replicas (moves never touch them): they are the repair source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from conftest import write_config
from support.seaweed import SeaweedFS

from ilm.config import load_settings
from ilm.errors import StorageError
from ilm.lifecycle.move import move_study
from ilm.service import ArchiveService
from ilm.storage.filesystem import FilesystemTier

STUDY = "1.2.826.0.1.3680043.12.1"
MIRROR = """
[tiers.mirror]
kind = "filesystem"
path = "tiers/mirror"
fsync = false
"""


def _config(home: Path, catalog_url: str, *, replicas: bool, pack_tier: str = "warm", extra: str = "") -> None:
    path = write_config(home, catalog_url, extra=extra + MIRROR)  # the mirror last: reads prefer the pack
    text = path.read_text()
    if replicas:
        text = text.replace('[tiers.hot]\nkind = "filesystem"', '[tiers.hot]\nreplicas = ["mirror"]\nkind = "filesystem"')
    if pack_tier == "warm":
        text = text.replace('[tiers.warm]\nkind = "filesystem"', '[tiers.warm]\npack_studies = true\nkind = "filesystem"')
    path.write_text(text)


def _open(home: Path) -> ArchiveService:
    return ArchiveService.open(load_settings(home=home, env={}))


def _packed_study(svc: ArchiveService, src: Path, tmp: Path, tier: str = "warm", n: int = 4,
                  study: str = STUDY) -> list[str]:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, f"{study}.1"
    uids = []
    for i in range(n):
        ds.SOPInstanceUID = f"{study}.1.{i + 1}"
        ds.InstanceNumber = i + 1
        p = tmp / f"in-{study}-{i}.dcm"
        ds.save_as(p)
        assert svc.ingest_path(p).status.value == "stored"
        uids.append(str(ds.SOPInstanceUID))
    assert move_study(svc.catalog, svc.tier, study, tier).ok
    return uids


def _packed(svc: ArchiveService, tier: str) -> dict[str, tuple[str, int, int, str]]:
    """SOP UID -> (pack key, offset, length, state) of the copies on ``tier``."""
    with svc.catalog.read() as c:
        rows = c.execute(sa.text(
            "SELECT i.sop_uid, l.object_key, l.pack_offset, l.pack_length, l.state FROM locations l "
            "JOIN instances i ON i.id = l.instance_pk WHERE l.tier = :t"), {"t": tier}).all()
    return {r[0]: (r[1], int(r[2]), int(r[3]), r[4]) for r in rows}


def _catalog_sha(svc: ArchiveService) -> dict[str, str]:
    with svc.catalog.read() as c:
        return {r[0]: r[1] for r in c.execute(sa.text("SELECT sop_uid, sha256 FROM instances")).all()}


def _read_back(svc: ArchiveService, tier: str) -> dict[str, str]:
    """Every instance read through the service from its copy on ``tier``, as SHA-256."""
    refs = [r for r in svc.instances_to_read(STUDY) if r.tier == tier and not r.problem]
    return {r.sop_uid: hashlib.sha256(svc.read(r)).hexdigest() for r in refs}


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _journal(svc: ArchiveService) -> list[str]:
    with svc.catalog.read() as c:
        return sorted({r[0] for r in c.execute(sa.text("SELECT state FROM moves")).all()})


@pytest.fixture
def svc(tmp_path: Path, catalog_url: str) -> Iterator[ArchiveService]:
    home = tmp_path / "home"
    _config(home, catalog_url, replicas=True)
    s = _open(home)
    try:
        yield s
    finally:
        s.close()


def test_a_bad_member_is_repaired_by_a_new_pack_and_the_old_one_goes(svc: ArchiveService, pydicom_test_files: Path,
                                                                     tmp_path: Path) -> None:
    sops = _packed_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
    before = _packed(svc, "warm")
    old_key, offset, _length, _state = before[sops[2]]
    old_file = svc.settings.home / "tiers/warm" / old_key
    _flip(old_file, offset + 100)

    report = svc.verify()
    assert (report.bad, report.missing, report.repaired, report.remaining) == (1, 0, 1, 0), report.problems
    (problem,) = report.problems
    assert (problem.tier, problem.sop_uid, problem.state, problem.repaired_from) == ("warm", sops[2], "bad", "mirror")
    after = _packed(svc, "warm")
    new_keys = {k for k, _o, _l, _s in after.values()}
    assert len(new_keys) == 1 and old_key not in new_keys  # one new pack holds every member
    assert {s for _k, _o, _l, s in after.values()} == {"verified"}
    assert not old_file.exists()  # nothing points into the old pack any more
    assert [p.name for p in old_file.parent.iterdir()] == [Path(next(iter(new_keys))).name]
    assert _read_back(svc, "warm") == _catalog_sha(svc)  # every instance, from the new pack
    repairs = [e for e in svc.audit() if e.action == "fixity.repair"]
    assert [(e.detail["sop_uid"], e.detail["from"], e.detail["old_pack"]) for e in repairs] == \
        [(sops[2], "mirror", old_key)]
    assert svc.audit_verify() == []
    assert _journal(svc) == ["done"]
    again = svc.verify()
    assert again.clean and again.ok == 8  # 4 in the pack, 4 replicas


def test_a_lost_pack_is_rebuilt_from_the_replicas(svc: ArchiveService, pydicom_test_files: Path,
                                                  tmp_path: Path) -> None:
    sops = _packed_study(svc, pydicom_test_files / "MR_small.dcm", tmp_path, n=3)
    _packed_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=1, study=f"{STUDY}.2")  # the tier is not empty
    old_key = _packed(svc, "warm")[sops[0]][0]
    (svc.settings.home / "tiers/warm" / old_key).unlink()
    report = svc.verify()
    assert (report.missing, report.repaired, report.remaining) == (3, 3, 0), report.problems
    assert {p.repaired_from for p in report.problems} == {"mirror"}
    assert set(_read_back(svc, "warm")) == set(sops)
    assert all(sha == _catalog_sha(svc)[s] for s, sha in _read_back(svc, "warm").items())
    assert svc.verify().clean


def test_without_a_verified_source_the_member_is_marked_reported_and_nothing_is_deleted(
        tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    home = tmp_path / "home"
    _config(home, catalog_url, replicas=False)
    svc = _open(home)
    try:
        sops = _packed_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
        key, offset, _l, _s = _packed(svc, "warm")[sops[1]]
        pack_file = home / "tiers/warm" / key
        _flip(pack_file, offset + 100)
        corrupt = pack_file.read_bytes()
        report = svc.verify()
        assert (report.bad, report.repaired, report.remaining) == (1, 0, 1)
        (problem,) = report.problems
        assert problem.sop_uid == sops[1] and "no other verified copy" in problem.kept_because
        assert pack_file.read_bytes() == corrupt  # the same pack, untouched; no other pack written
        assert [p.name for p in pack_file.parent.iterdir()] == [pack_file.name]
        assert _packed(svc, "warm")[sops[1]][3] == "bad"
        assert {r.sop_uid for r in svc.instances_to_read(STUDY) if not r.problem} == {sops[0], sops[2]}  # never served
        assert _journal(svc) == ["done"]  # only the move that packed it
    finally:
        svc.close()


def test_a_member_without_source_keeps_the_old_pack_while_the_others_are_repaired(
        svc: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    sops = _packed_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
    packed = _packed(svc, "warm")
    old_key = packed[sops[0]][0]
    old_file = svc.settings.home / "tiers/warm" / old_key
    _flip(old_file, packed[sops[0]][1] + 100)
    _flip(old_file, packed[sops[3]][1] + 100)
    with svc.catalog.write() as c:  # the replica of sops[3] is lost too
        c.execute(sa.text("DELETE FROM locations WHERE tier = 'mirror' AND instance_pk = "
                          "(SELECT id FROM instances WHERE sop_uid = :u)"), {"u": sops[3]})
    report = svc.verify()
    assert (report.bad, report.repaired, report.remaining) == (2, 1, 1), report.problems
    fates = {p.sop_uid: (p.repaired_from, p.kept_because) for p in report.problems}
    assert fates[sops[0]] == ("mirror", "")
    assert fates[sops[3]][0] is None and "no other verified copy" in fates[sops[3]][1]
    after = _packed(svc, "warm")
    assert after[sops[3]][:2] == packed[sops[3]][:2] and after[sops[3]][3] == "bad"  # still in the old pack
    assert old_file.exists()  # it still holds the only copy of sops[3], however bad
    new_key = after[sops[0]][0]
    assert new_key != old_key and {after[s][0] for s in sops[:3]} == {new_key}
    readable = _read_back(svc, "warm")
    assert set(readable) == set(sops[:3]) and all(readable[s] == _catalog_sha(svc)[s] for s in sops[:3])
    svc.recover()
    assert old_file.exists()  # recovery does not take it either


def test_a_failed_write_of_the_new_pack_changes_nothing(svc: ArchiveService, pydicom_test_files: Path,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sops = _packed_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
    key, offset, _l, _s = _packed(svc, "warm")[sops[1]]
    old_file = svc.settings.home / "tiers/warm" / key
    _flip(old_file, offset + 100)
    real_put = FilesystemTier.put

    def failing_put(self: FilesystemTier, k: str, data: bytes, sha256: str | None = None) -> object:
        if k.endswith(".pack"):
            raise StorageError(f"tier {self.name!r}: disk on fire writing {k}")
        return real_put(self, k, data, sha256)

    monkeypatch.setattr(FilesystemTier, "put", failing_put)
    report = svc.verify()
    assert (report.bad, report.repaired, report.remaining) == (1, 0, 1)
    assert "disk on fire" in report.problems[0].kept_because
    assert [p.name for p in old_file.parent.iterdir()] == [old_file.name]  # no new pack left behind
    assert _packed(svc, "warm")[sops[1]] == (key, offset, _l, "bad")
    assert "pack_copying" not in _journal(svc)
    monkeypatch.undo()
    report = svc.verify()  # the next run repairs it
    assert (report.repaired, report.remaining) == (1, 0)
    assert _read_back(svc, "warm") == _catalog_sha(svc)


def test_a_crash_after_the_switch_leaves_the_old_pack_to_recovery(svc: ArchiveService, pydicom_test_files: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sops = _packed_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
    key, offset, _l, _s = _packed(svc, "warm")[sops[0]]
    old_file = svc.settings.home / "tiers/warm" / key
    _flip(old_file, offset + 100)
    real_delete = FilesystemTier.delete

    def crashing_delete(self: FilesystemTier, k: str) -> None:
        if k == key:
            raise StorageError("the process died here")
        real_delete(self, k)

    monkeypatch.setattr(FilesystemTier, "delete", crashing_delete)
    report = svc.verify()
    assert (report.repaired, report.remaining) == (1, 0)  # the members are switched: repaired
    assert old_file.exists() and "repacked" in _journal(svc)
    assert _read_back(svc, "warm") == _catalog_sha(svc)
    monkeypatch.undo()
    svc.recover()
    assert not old_file.exists() and _journal(svc) == ["done"]
    assert _read_back(svc, "warm") == _catalog_sha(svc)


def test_a_crash_before_the_switch_is_rolled_back_by_recovery(svc: ArchiveService, pydicom_test_files: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new pack is written, then the process dies before the catalog switches (simulated by
    a failing switch whose clean-up cannot delete either): recovery removes the orphan pack."""
    import ilm.fixity.repack as repack

    sops = _packed_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
    key, offset, _l, _s = _packed(svc, "warm")[sops[2]]
    old_file = svc.settings.home / "tiers/warm" / key
    _flip(old_file, offset + 100)

    def dies(*_a: object, **_k: object) -> None:
        raise StorageError("the process died before the switch")

    real_delete = FilesystemTier.delete
    monkeypatch.setattr(repack, "switch_pack", dies)
    monkeypatch.setattr(FilesystemTier, "delete", lambda self, k: dies())
    report = svc.verify()
    assert (report.repaired, report.remaining) == (0, 1)
    assert len(list(old_file.parent.iterdir())) == 2 and "pack_copying" in _journal(svc)  # the orphan new pack
    assert _packed(svc, "warm")[sops[2]][3] == "bad"
    monkeypatch.setattr(FilesystemTier, "delete", real_delete)
    svc.recover()
    assert [p.name for p in old_file.parent.iterdir()] == [old_file.name]
    assert "pack_copying" not in _journal(svc)
    monkeypatch.undo()
    assert svc.verify().repaired == 1
    assert _read_back(svc, "warm") == _catalog_sha(svc)


@pytest.mark.s3
def test_a_bad_member_of_a_pack_on_seaweedfs_is_repaired(tmp_path: Path, catalog_url: str, s3_server: SeaweedFS,
                                                        pydicom_test_files: Path) -> None:
    bucket = s3_server.new_bucket_name("packfix")
    home = tmp_path / "home"
    _config(home, catalog_url, replicas=True, pack_tier="cold", extra=f"""
[tiers.cold]
kind = "s3"
bucket = "{bucket}"
prefix = "p"
pack_studies = true
endpoint_url = "{s3_server.endpoint_url}"
access_key_id = "{s3_server.access_key}"
secret_access_key = "{s3_server.secret_key}"
create_bucket = true
""")
    svc = _open(home)
    try:
        sops = _packed_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, tier="cold", n=3)
        key, offset, _l, _s = _packed(svc, "cold")[sops[1]]
        client = s3_server.client()
        data = bytearray(client.get_object(Bucket=bucket, Key=f"p/{key}")["Body"].read())
        data[offset + 100] ^= 0xFF
        client.put_object(Bucket=bucket, Key=f"p/{key}", Body=bytes(data))  # bit rot behind ilm's back
        report = svc.verify()
        assert (report.bad, report.repaired, report.remaining) == (1, 1, 0), report.problems
        assert report.problems[0].repaired_from == "mirror"
        new_key = _packed(svc, "cold")[sops[1]][0]
        assert new_key != key
        listed = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert listed == [f"p/{new_key}"]  # the old pack is gone
        assert _read_back(svc, "cold") == _catalog_sha(svc)
        assert svc.verify().clean
    finally:
        svc.close()
