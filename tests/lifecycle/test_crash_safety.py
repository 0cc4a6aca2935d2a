"""Crash safety: a real `ilm apply` moving instances from a filesystem tier to
S3 (SeaweedFS) is killed with SIGKILL at random moments, then resumed.

After every kill, every instance still has a verified copy whose bytes match
the catalog; after the final resume, every instance is on S3 only, no object
is left that the catalog does not know, and the catalog is consistent.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from conftest import write_config
from support.seaweed import SeaweedFS

from ilm.config import Settings, load_settings
from ilm.service import ArchiveService

pytestmark = [pytest.mark.s3, pytest.mark.slow]

POLICY = """
name: all-to-cloud
rules:
  - id: hot-to-cloud
    when:
      current_tier: hot
    action: {transition: cloud}
"""
STUDIES, PER_STUDY = 12, 25  # 300 instances


def _settings(tmp_path: Path, catalog_url: str, sw: SeaweedFS, mb_per_s: float) -> Settings:
    home = tmp_path / "home"
    write_config(home, catalog_url, extra=f"""
[tiers.cloud]
kind = "s3"
bucket = "{sw.new_bucket_name('crash')}"
endpoint_url = "{sw.endpoint_url}"
access_key_id = "{sw.access_key}"
secret_access_key = "{sw.secret_key}"
create_bucket = true
connect_timeout_seconds = 1
max_attempts = 1

[lifecycle]
max_mb_per_s = {mb_per_s}
move_workers = 4
""")
    return load_settings(home=home, env={})


def _fill(service: ArchiveService, src: Path, tmp: Path) -> None:
    ds = pydicom.dcmread(src)
    ds.StudyDate = "20150101"
    ds.PatientBirthDate = "19500101"
    folder = tmp / "in"
    folder.mkdir()
    for s in range(STUDIES):
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.9.{s + 1}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.9.{s + 1}.1"
        for i in range(PER_STUDY):
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.9.{s + 1}.1.{i + 1}"
            ds.save_as(folder / f"{s}-{i}.dcm")
    report = service.import_paths([folder])
    assert report.stored == STUDIES * PER_STUDY


def _ilm(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ILM_HOME=str(settings.home))
    return subprocess.Popen([sys.executable, "-m", "ilm", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _verified_copies(service: ArchiveService) -> dict[str, list[tuple[str, str, str]]]:
    """SOP UID -> [(tier, key, catalog sha)] of its VERIFIED copies."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    with service.catalog.read() as c:
        rows = c.execute(sa.text(
            "SELECT i.sop_uid, l.tier, l.object_key, i.sha256 FROM instances i "
            "JOIN locations l ON l.instance_pk = i.id WHERE l.state = 'verified'"))
        for sop, tier, key, sha in rows:
            out.setdefault(sop, []).append((tier, key, sha))
    return out


def _assert_no_image_lost(service: ArchiveService) -> None:
    copies = _verified_copies(service)
    assert len(copies) == STUDIES * PER_STUDY
    for sop, cs in copies.items():
        good = 0
        for tier, key, sha in cs:
            try:
                if hashlib.sha256(service.tier(tier).get(key)).hexdigest() == sha:
                    good += 1
            except Exception:
                pass
        assert good >= 1, f"{sop}: no copy matches the catalog"


def test_sigkill_during_apply_never_loses_an_image(tmp_path: Path, catalog_url: str, s3_server: SeaweedFS,
                                                    pydicom_test_files: Path) -> None:
    # ~12 MB at 0.8 MB/s: each run moves part of a study or two before it is killed.
    settings = _settings(tmp_path, catalog_url, s3_server, mb_per_s=0.8)
    service = ArchiveService.open(settings)
    try:
        _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path)
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        plan = json.loads(subprocess.run(
            [sys.executable, "-m", "ilm", "plan", "--policy", str(policy), "--json"],
            env=dict(os.environ, ILM_HOME=str(settings.home)), check=True, capture_output=True).stdout)
        plan_id = plan["plan_id"]
        rng = random.Random(20261128)
        kills = 0
        for _ in range(60):
            proc = _ilm(settings, "apply", plan_id, "--resume", "--approved-by", "crash-test")
            time.sleep(rng.uniform(0.8, 2.0))  # python start-up takes ~0.7 s; kill anywhere after
            if proc.poll() is not None:
                break  # finished before the kill
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            _assert_no_image_lost(service)
        assert kills >= 20, f"only {kills} kills happened before apply finished"
        # Resume to the end, without limits
        final = _ilm(settings, "apply", plan_id, "--resume", "--approved-by", "crash-test")
        out, err = final.communicate(timeout=600)
        assert final.returncode == 0, err.decode()
        _assert_no_image_lost(service)
        copies = _verified_copies(service)
        assert all([t for t, _k, _s in cs] == ["cloud"] for cs in copies.values())
        with service.catalog.read() as c:
            assert c.execute(sa.text("SELECT count(*) FROM locations WHERE state <> 'verified'")).scalar_one() == 0
            assert c.execute(sa.text("SELECT count(*) FROM moves WHERE state IN ('copying','committed')")).scalar_one() == 0
            assert c.execute(sa.text(
                "SELECT count(*) FROM studies s WHERE s.instance_count <> "
                "(SELECT count(*) FROM instances i WHERE i.study_pk = s.id)")).scalar_one() == 0
            assert c.execute(sa.text("SELECT state FROM plans")).scalar_one() == "applied"
        known = {k for cs in copies.values() for _t, k, _s in cs}
        assert set(service.tier("cloud").keys()) == known  # nothing the catalog does not know
        assert list(service.tier("hot").keys()) == []
    finally:
        service.close()


def test_apply_with_s3_down_fails_cleanly_then_resumes(tmp_path: Path, catalog_url: str, s3_server: SeaweedFS,
                                                       pydicom_test_files: Path) -> None:
    settings = _settings(tmp_path, catalog_url, s3_server, mb_per_s=0)
    service = ArchiveService.open(settings)
    try:
        _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path)
        service.tier("cloud").keys()  # bucket exists before the server goes away
        list(service.tier("cloud").keys())
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        plan = service.plan(policy, as_of=__import__("datetime").date.today(), by="t").plan
        with s3_server.down():
            report = service.apply(plan.id, approved_by="t")
            assert report.done == 0 and len(report.failed) == STUDIES
            assert "unreachable" in report.failed[0][1]
            _assert_no_image_lost(service)
            assert [t for cs in _verified_copies(service).values() for t, _k, _s in cs] == ["hot"] * (STUDIES * PER_STUDY)
        report = service.apply(plan.id, approved_by="t")
        assert report.done == STUDIES and not report.failed
        assert {t for cs in _verified_copies(service).values() for t, _k, _s in cs} == {"cloud"}
    finally:
        service.close()
