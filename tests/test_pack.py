"""Packed studies: a whole study as one ZIP object on a ``pack_studies`` tier.

Round trips on a filesystem tier and on S3 (SeaweedFS): every instance read
back through a ranged read is byte-equal to what was stored; reading one
instance asks the store for that instance's bytes only (checked on the wire
for S3); a pack is deleted only when no location points into it; a crash at
any step leaves no orphan pack once recovery ran.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from conftest import write_config
from support.seaweed import SeaweedFS

from ilm.config import load_settings
from ilm.lifecycle import pack_move
from ilm.lifecycle.move import move_study, recover_moves
from ilm.service import ArchiveService
from ilm.storage.pack import PackMember, build_pack, read_index

N = 7


class Crash(BaseException):
    """Stands for the process dying: no handler of ilm catches it."""


def _service(tmp_path: Path, catalog_url: str, extra: str) -> ArchiveService:
    home = tmp_path / "home"
    write_config(home, catalog_url, extra=extra)
    return ArchiveService.open(load_settings(home=home, env={}))


COLD_FS = """
[tiers.cold]
kind = "filesystem"
path = "tiers/cold"
fsync = false
pack_studies = true
"""


def _cold_s3(sw: SeaweedFS) -> str:
    return f"""
[tiers.cold]
kind = "s3"
bucket = "{sw.make_bucket('pack')}"
endpoint_url = "{sw.endpoint_url}"
access_key_id = "{sw.access_key}"
secret_access_key = "{sw.secret_key}"
pack_studies = true
max_attempts = 1
"""


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.s3)])
def svc(request: pytest.FixtureRequest, tmp_path: Path, catalog_url: str) -> Iterator[ArchiveService]:
    extra = COLD_FS if request.param == "filesystem" else _cold_s3(request.getfixturevalue("s3_server"))
    s = _service(tmp_path, catalog_url, extra)
    try:
        yield s
    finally:
        s.close()


def _ingest_study(service: ArchiveService, src: Path, tmp: Path, n: int = N, study: str = "1.2.826.0.1.3680043.10.55",
                  first: int = 1) -> dict[str, bytes]:
    """A study of ``n`` instances of different sizes; SOP UID -> stored bytes."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study
    out = {}
    for i in range(first, first + n):
        ds.SeriesInstanceUID = f"{study}.{1 + i % 2}"
        ds.SOPInstanceUID = f"{study}.{1 + i % 2}.{i}"
        ds.ImageComments = "x" * (i * 37)  # different sizes, so offsets are not a multiple of anything
        p = tmp / f"{study}-{i}.dcm"
        ds.save_as(p)
        r = service.ingest_path(p)
        assert r.status.value == "stored", r.reason
        out[str(ds.SOPInstanceUID)] = p.read_bytes()
    return out


def _rows(service: ArchiveService) -> list[tuple[str, str, str, Any, Any]]:
    with service.catalog.read() as c:
        return [tuple(r) for r in c.execute(sa.text(  # type: ignore[misc]
            "SELECT i.sop_uid, l.tier, l.object_key, l.pack_offset, l.pack_length FROM locations l "
            "JOIN instances i ON i.id = l.instance_pk ORDER BY i.sop_uid, l.tier"))]


def _journal(service: ArchiveService) -> list[str]:
    with service.catalog.read() as c:
        return sorted({r[0] for r in c.execute(sa.text("SELECT state FROM moves"))})


def _keys(service: ArchiveService, tier: str) -> list[str]:
    return sorted(service.tier(tier).keys())


def _read_all(service: ArchiveService, study: str) -> dict[str, bytes]:
    return {r.sop_uid: service.read(r) for r in service.instances_to_read(study)}


# -- the format ---------------------------------------------------------------------


def test_pack_is_a_plain_zip_with_an_index() -> None:
    members = [PackMember(f"1.2.3.{i}", "1.2.9", bytes([i]) * (1000 + i)) for i in range(5)]
    pack = build_pack("1.2.3", members)
    with zipfile.ZipFile(io.BytesIO(pack.data)) as zf:
        assert zf.namelist() == [f"1.2.9/1.2.3.{i}.dcm" for i in range(5)] + ["index.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        for m in members:
            assert zf.read(f"1.2.9/{m.sop_uid}.dcm") == m.data
    index = read_index(pack.data)
    assert index == list(pack.entries)
    for m, e in zip(members, index):
        assert pack.data[e.offset:e.offset + e.length] == m.data
        assert e.sha256 == hashlib.sha256(m.data).hexdigest()
    assert build_pack("1.2.3", members).data == pack.data  # reproducible


# -- round trips ----------------------------------------------------------------------


def test_packed_round_trip(svc: ArchiveService, pydicom_test_files: Path, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.10.55"
    originals = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
    r = move_study(svc.catalog, svc.tier, study, "cold")
    assert r.ok and r.moved == N, r.failed
    assert _keys(svc, "hot") == []
    (key,) = _keys(svc, "cold")  # ONE object for the whole study
    assert key.startswith(f"{study}/") and key.endswith(".pack")
    rows = _rows(svc)
    assert {(t, k) for _s, t, k, _o, _l in rows} == {("cold", key)}
    assert all(o is not None and ln == len(originals[s]) for s, _t, _k, o, ln in rows)
    assert _journal(svc) == ["done"]
    detail = svc.study(study)
    assert detail is not None and detail.summary.tiers == ("cold",)
    # Every instance, read through the service (a ranged read), is byte-equal to what was sent.
    assert _read_all(svc, study) == originals
    # The object itself is a ZIP whose index agrees with the catalog.
    whole = svc.tier("cold").get(key)
    assert {e.sop_uid: (e.offset, e.length) for e in read_index(whole)} == {s: (o, ln) for s, _t, _k, o, ln in rows}
    # Moving again does nothing; unpacking to a plain tier restores one object per instance.
    assert move_study(svc.catalog, svc.tier, study, "cold").moved == 0
    back = move_study(svc.catalog, svc.tier, study, "warm")
    assert back.ok and back.moved == N, back.failed
    assert _keys(svc, "cold") == []  # the pack went once nothing pointed into it
    assert len(_keys(svc, "warm")) == N and all(k.endswith(".dcm") for k in _keys(svc, "warm"))
    assert _read_all(svc, study) == originals
    assert {p for _s, _t, _k, p, _l in _rows(svc)} == {None}


def test_instances_arriving_after_packing_get_a_second_pack(svc: ArchiveService, pydicom_test_files: Path,
                                                            tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.10.55"
    originals = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=3)
    assert move_study(svc.catalog, svc.tier, study, "cold").moved == 3
    originals |= _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=2, first=10)
    assert move_study(svc.catalog, svc.tier, study, "cold").moved == 2
    assert len(_keys(svc, "cold")) == 2 and _keys(svc, "hot") == []
    assert _read_all(svc, study) == originals


def test_reading_one_instance_reads_only_its_bytes(svc: ArchiveService, pydicom_test_files: Path,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = "1.2.826.0.1.3680043.10.55"
    originals = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
    assert move_study(svc.catalog, svc.tier, study, "cold").ok
    cold = svc.tier("cold")
    (key,) = _keys(svc, "cold")
    pack_size = cold.stat(key).size
    calls: list[tuple[str, int]] = []
    real_range = cold.get_range

    def no_get(k: str) -> bytes:
        raise AssertionError("a one-instance read fetched a whole object")

    def spy(k: str, offset: int, length: int) -> bytes:
        calls.append((k, length))
        return real_range(k, offset, length)

    monkeypatch.setattr(cold, "get", no_get)
    monkeypatch.setattr(cold, "get_range", spy)
    wire: list[int] = []
    if hasattr(cold, "_s3"):  # S3: count what the server actually sends
        def on_get(http_response: Any, parsed: dict[str, Any], **_kw: Any) -> None:
            wire.append(int(parsed.get("ContentLength", -1)))

        cold._s3().meta.events.register("after-call.s3.GetObject", on_get)
    sop = sorted(originals)[3]
    (ref,) = svc.instances_to_read(study, sop_uid=sop)
    assert svc.read(ref) == originals[sop]
    assert calls == [(key, len(originals[sop]))]
    assert len(originals[sop]) < pack_size / N * 2
    if hasattr(cold, "_s3"):
        assert wire == [len(originals[sop])]


def test_corrupt_instance_in_a_pack_is_refused_on_read(tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    svc = _service(tmp_path, catalog_url, COLD_FS)
    try:
        study = "1.2.826.0.1.3680043.10.55"
        _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
        assert move_study(svc.catalog, svc.tier, study, "cold").ok
        (key,) = _keys(svc, "cold")
        ref = svc.instances_to_read(study)[0]
        path = svc.settings.resolve("tiers/cold") / key
        raw = bytearray(path.read_bytes())
        assert ref.pack_offset is not None
        raw[ref.pack_offset + 200] ^= 0xFF
        path.write_bytes(bytes(raw))
        with pytest.raises(Exception, match="does not match its SHA-256"):
            svc.read(ref)
    finally:
        svc.close()


# -- a pack is deleted only when nothing points into it ----------------------------------


def test_pack_stays_while_an_instance_still_points_into_it(svc: ArchiveService, pydicom_test_files: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study = "1.2.826.0.1.3680043.10.55"
    originals = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=4)
    assert move_study(svc.catalog, svc.tier, study, "cold").ok
    (key,) = _keys(svc, "cold")
    victim = sorted(originals)[1]
    warm = svc.tier("warm")
    real_put = warm.put

    def failing_put(k: str, data: bytes, sha256: str | None = None) -> Any:
        if victim in k:
            from ilm.errors import StorageError

            raise StorageError("tier 'warm': disk full writing " + k)
        return real_put(k, data, sha256)

    monkeypatch.setattr(warm, "put", failing_put)
    r = move_study(svc.catalog, svc.tier, study, "warm")
    assert r.moved == 3 and len(r.failed) == 1 and victim in r.failed[0]
    assert _keys(svc, "cold") == [key]  # the victim still lives in the pack
    assert [(s, t) for s, t, *_x in _rows(svc) if t == "cold"] == [(victim, "cold")]
    assert _read_all(svc, study) == originals
    monkeypatch.setattr(warm, "put", real_put)
    r = move_study(svc.catalog, svc.tier, study, "warm")
    assert r.ok and r.moved == 1
    assert _keys(svc, "cold") == []
    assert _read_all(svc, study) == originals
    assert _journal(svc) == ["done", "rolled_back"]


# -- crashes --------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["after_put", "after_commit", "after_one_delete"])
def test_crash_while_packing_leaves_no_orphan(tmp_path: Path, catalog_url: str, pydicom_test_files: Path,
                                             monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    svc = _service(tmp_path, catalog_url, COLD_FS)
    try:
        study = "1.2.826.0.1.3680043.10.55"
        originals = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
        if step == "after_put":
            def crash(*_a: Any, **_k: Any) -> None:
                raise Crash()

            monkeypatch.setattr(pack_move, "commit_pack_moves", crash)
        elif step == "after_commit":
            def crash_finish(*_a: Any, **_k: Any) -> int:
                raise Crash()

            monkeypatch.setattr(pack_move, "_finish", crash_finish)
        else:
            hot = svc.tier("hot")
            real_delete = hot.delete
            count = [0]

            def crash_delete(k: str) -> None:
                count[0] += 1
                if count[0] == 3:
                    raise Crash()
                real_delete(k)

            monkeypatch.setattr(hot, "delete", crash_delete)
        with pytest.raises(Crash):
            move_study(svc.catalog, svc.tier, study, "cold")
        monkeypatch.undo()
        # Every instance is still readable after the crash, before recovery.
        assert _read_all(svc, study) == originals
        report = recover_moves(svc.catalog, svc.tier)
        assert not report.problems
        assert _read_all(svc, study) == originals
        assert "pack_copying" not in _journal(svc) and "dropping" not in _journal(svc)
        if step == "after_put":
            assert _keys(svc, "cold") == []  # the uncommitted pack is gone: no orphan
            assert len(_keys(svc, "hot")) == N
            assert report.rolled_back == N
        else:
            assert len(_keys(svc, "cold")) == 1 and _keys(svc, "hot") == []
            assert {t for _s, t, *_x in _rows(svc)} == {"cold"}
        # Nothing on any tier that the catalog does not know.
        known = {(t, k) for _s, t, k, *_x in _rows(svc)}
        for tier in ("hot", "warm", "cold"):
            assert {(tier, k) for k in _keys(svc, tier)} <= known
        # And the move can be done (again) to the end.
        assert move_study(svc.catalog, svc.tier, study, "cold").ok
        assert len(_keys(svc, "cold")) == 1 and _keys(svc, "hot") == []
        assert _read_all(svc, study) == originals
    finally:
        svc.close()


def test_crash_while_unpacking_is_rolled_back(tmp_path: Path, catalog_url: str, pydicom_test_files: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    svc = _service(tmp_path, catalog_url, COLD_FS)
    try:
        study = "1.2.826.0.1.3680043.10.55"
        originals = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
        assert move_study(svc.catalog, svc.tier, study, "cold").ok

        def crash(*_a: Any, **_k: Any) -> None:
            raise Crash()

        monkeypatch.setattr(pack_move, "commit_pack_moves", crash)
        with pytest.raises(Crash):
            move_study(svc.catalog, svc.tier, study, "warm")
        monkeypatch.undo()
        assert len(_keys(svc, "warm")) == N  # written, not committed
        report = recover_moves(svc.catalog, svc.tier)
        assert report.rolled_back == N and not report.problems
        assert _keys(svc, "warm") == [] and len(_keys(svc, "cold")) == 1
        assert _read_all(svc, study) == originals
    finally:
        svc.close()


def test_apply_of_a_policy_plan_packs(tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    """A policy transition to a pack_studies tier packs, through plan and apply."""
    svc = _service(tmp_path, catalog_url, COLD_FS)
    try:
        study = "1.2.826.0.1.3680043.10.55"
        originals = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path)
        policy = tmp_path / "p.yaml"
        policy.write_text("name: to-cold\nrules:\n  - id: all-cold\n    when: {current_tier: hot}\n"
                          "    action: {transition: cold}\n")
        plan = svc.plan(policy, as_of=datetime.now(UTC).date(), by="test")
        report = svc.apply(plan.plan.id, approved_by="test")
        assert report.done == 1 and not report.failed
        assert len(_keys(svc, "cold")) == 1
        assert _read_all(svc, study) == originals
    finally:
        svc.close()


def test_resend_of_a_packed_instance_under_another_header_is_a_duplicate(tmp_path: Path, catalog_url: str,
                                                                         pydicom_test_files: Path) -> None:
    svc = _service(tmp_path, catalog_url, COLD_FS)
    try:
        study = "1.2.826.0.1.3680043.10.55"
        originals = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=2)
        assert move_study(svc.catalog, svc.tier, study, "cold").ok
        sop = sorted(originals)[0]
        ds = pydicom.dcmread(io.BytesIO(originals[sop]))
        ds.file_meta.ImplementationVersionName = "OTHER_SENDER"  # same dataset, another file meta header
        buf = io.BytesIO()
        ds.save_as(buf)
        assert buf.getvalue() != originals[sop]
        r = svc.ingest_bytes(buf.getvalue(), "resend")
        assert r.status.value == "duplicate", r.reason
        assert len(_keys(svc, "cold")) == 1 and _keys(svc, "hot") == []
    finally:
        svc.close()


@pytest.mark.s3
@pytest.mark.slow
def test_sigkill_while_packing_to_s3_leaves_no_orphan(tmp_path: Path, catalog_url: str, s3_server: SeaweedFS,
                                                      pydicom_test_files: Path) -> None:
    """A real ``ilm apply`` packing studies onto S3, killed with SIGKILL at random
    moments and resumed: every instance stays readable after every kill; at the end
    each study is one pack, and the bucket holds nothing the catalog does not know."""
    import json
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    studies, per = 8, 20
    svc = _service(tmp_path, catalog_url, _cold_s3(s3_server) + "\n[lifecycle]\nmax_mb_per_s = 0.8\n")
    try:
        originals: dict[str, bytes] = {}
        uids = [f"1.2.826.0.1.3680043.10.56.{s + 1}" for s in range(studies)]
        for uid in uids:
            originals |= _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, n=per, study=uid)
        policy = tmp_path / "p.yaml"
        policy.write_text("name: to-cold\nrules:\n  - id: all-cold\n    when: {current_tier: hot}\n"
                          "    action: {transition: cold}\n")
        env = dict(os.environ, ILM_HOME=str(svc.settings.home))
        plan = json.loads(subprocess.run([sys.executable, "-m", "ilm", "plan", "--policy", str(policy), "--json"],
                                         env=env, check=True, capture_output=True).stdout)

        def all_readable() -> None:
            got: dict[str, bytes] = {}
            for uid in uids:
                got |= _read_all(svc, uid)
            assert got == originals

        rng = random.Random(4)
        kills = 0
        for _ in range(40):
            proc = subprocess.Popen([sys.executable, "-m", "ilm", "apply", plan["plan_id"], "--resume",
                                     "--approved-by", "crash-test"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.8, 2.5))
            if proc.poll() is not None:
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            all_readable()
        assert kills >= 5, f"only {kills} kills happened before apply finished"
        final = subprocess.run([sys.executable, "-m", "ilm", "apply", plan["plan_id"], "--resume",
                                "--approved-by", "crash-test"], env=env, capture_output=True, timeout=600)
        assert final.returncode == 0, final.stderr.decode()
        all_readable()
        rows = _rows(svc)
        assert {t for _s, t, *_x in rows} == {"cold"}
        packs = _keys(svc, "cold")
        assert len(packs) == studies and all(k.endswith(".pack") for k in packs)
        assert {k for _s, _t, k, *_x in rows} == set(packs)  # no orphan pack, no pack without its instances
        assert _keys(svc, "hot") == []
        assert set(_journal(svc)) <= {"done", "rolled_back"}
    finally:
        svc.close()
