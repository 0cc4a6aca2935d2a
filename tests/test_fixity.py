"""Fixity: ilm verify re-reads copies, marks bad and missing ones, repairs them
from a replica, never serves them and never deletes the last copy; replica
copies survive moves and go with a purge. Real files, a real SeaweedFS, both
catalogs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from conftest import write_config
from support.seaweed import SeaweedFS

from ilm.cli import app as ilm_app
from ilm.config import load_settings
from ilm.errors import ConfigError, IntegrityError
from ilm.fixity.scrub import Scrubber
from ilm.fixity.verify import sample_ids
from ilm.lifecycle import retention
from ilm.service import ArchiveService
from ilm.uids import instance_key

MIRROR = """
[tiers.mirror]
kind = "filesystem"
path = "tiers/mirror"
fsync = false
"""


def _config_with(home: Path, catalog_url: str, *, replicas: str | None, extra: str = "") -> Path:
    """conftest's hot + warm config, hot replicated to ``replicas`` (or not)."""
    path = write_config(home, catalog_url, extra=MIRROR + extra)
    if replicas is not None:
        text = path.read_text().replace('[tiers.hot]\nkind = "filesystem"',
                                        f'[tiers.hot]\nreplicas = ["{replicas}"]\nkind = "filesystem"')
        path.write_text(text)
    return path


def _open(home: Path) -> ArchiveService:
    return ArchiveService.open(load_settings(home=home, env={}))


def _ingest_study(svc: ArchiveService, src: Path, tmp: Path, tag: int, n: int = 3, study_date: str = "20100301") -> list[str]:
    """``n`` instances of one new study; returns their SOP Instance UIDs."""
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.11.{tag}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.11.{tag}.1"
    ds.StudyDate = study_date
    uids = []
    for i in range(n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.11.{tag}.1.{i + 1}"
        p = tmp / f"in-{tag}-{i}.dcm"
        ds.save_as(p)
        r = svc.ingest_path(p)
        assert r.status.value == "stored", r.reason
        uids.append(str(ds.SOPInstanceUID))
    return uids


def _study(tag: int) -> str:
    return f"1.2.826.0.1.3680043.11.{tag}"


def _key(tag: int, sop: str) -> str:
    return instance_key(_study(tag), f"{_study(tag)}.1", sop)


def _copies(svc: ArchiveService, sop: str) -> dict[str, tuple[str, bool, str | None]]:
    """tier -> (state, replica, problem) of every copy of an instance."""
    with svc.catalog.read() as c:
        rows = c.execute(sa.text(
            "SELECT l.tier, l.state, l.replica, l.problem FROM locations l JOIN instances i ON i.id = l.instance_pk "
            "WHERE i.sop_uid = :u"), {"u": sop}).all()
    return {r[0]: (r[1], bool(r[2]), r[3]) for r in rows}


def _flip(path: Path, at: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _audit_actions(svc: ArchiveService) -> list[str]:
    return [e.action for e in svc.audit()]


@pytest.fixture
def mirrored(tmp_path: Path, catalog_url: str) -> Iterator[ArchiveService]:
    home = tmp_path / "home"
    _config_with(home, catalog_url, replicas="mirror")
    svc = _open(home)
    try:
        yield svc
    finally:
        svc.close()


def test_ingest_writes_the_replica_and_a_clean_archive_verifies(mirrored: ArchiveService, pydicom_test_files: Path,
                                                                tmp_path: Path) -> None:
    sops = _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 1)
    for sop in sops:
        assert _copies(mirrored, sop) == {"hot": ("verified", False, None), "mirror": ("verified", True, None)}
        assert (mirrored.settings.home / "tiers/mirror" / _key(1, sop)).read_bytes() == \
            (mirrored.settings.home / "tiers/hot" / _key(1, sop)).read_bytes()
    detail = mirrored.study(_study(1))
    assert detail is not None and detail.summary.tiers  # studies.tiers counts the primary only
    report = mirrored.verify()
    assert (report.objects, report.ok, report.bad, report.missing, report.repaired) == (6, 6, 0, 0, 0)
    assert report.clean and report.bytes == 2 * sum(len((tmp_path / f"in-1-{i}.dcm").read_bytes()) for i in range(3))


def test_flipped_byte_is_marked_repaired_from_the_replica_and_audited(mirrored: ArchiveService,
                                                                      pydicom_test_files: Path, tmp_path: Path) -> None:
    sops = _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 2)
    hot_file = mirrored.settings.home / "tiers/hot" / _key(2, sops[1])
    original = hot_file.read_bytes()
    _flip(hot_file)

    report = mirrored.verify()
    assert (report.bad, report.missing, report.repaired, report.remaining) == (1, 0, 1, 0)
    (problem,) = report.problems
    assert (problem.tier, problem.sop_uid, problem.state, problem.repaired_from) == ("hot", sops[1], "bad", "mirror")
    assert "SHA-256" in problem.why
    assert hot_file.read_bytes() == original
    assert _copies(mirrored, sops[1])["hot"] == ("verified", False, None)
    actions = _audit_actions(mirrored)
    assert actions.count("fixity.bad") == 1 and actions.count("fixity.repair") == 1
    assert mirrored.audit_verify() == []  # the chain is intact

    again = mirrored.verify()
    assert again.clean and (again.objects, again.ok) == (6, 6)


def test_a_read_that_finds_a_bad_copy_serves_the_replica_and_marks_it(mirrored: ArchiveService,
                                                                      pydicom_test_files: Path, tmp_path: Path) -> None:
    """A read (WADO-RS, C-GET, C-MOVE, export: all through ArchiveService.read) checks the bytes
    against the catalog: a bad copy no fixity check has found yet is marked bad and audited as a
    check would, the replica's bytes are served, and the next verify repairs the copy."""
    sops = _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 12)
    hot_file = mirrored.settings.home / "tiers/hot" / _key(12, sops[1])
    original = hot_file.read_bytes()
    _flip(hot_file)
    refs = {r.sop_uid: r for r in mirrored.instances_to_read(_study(12))}
    assert refs[sops[1]].tier == "hot"  # not known to be bad yet
    assert mirrored.read(refs[sops[1]]) == original  # the replica's bytes, not the flipped ones
    assert _copies(mirrored, sops[1])["hot"][0] == "bad"
    assert _audit_actions(mirrored).count("fixity.bad") == 1
    assert {r.sop_uid: r.tier for r in mirrored.instances_to_read(_study(12))}[sops[1]] == "mirror"
    report = mirrored.verify()
    assert (report.repaired, report.remaining) == (1, 0) and hot_file.read_bytes() == original


def test_deleted_object_is_missing_then_repaired(mirrored: ArchiveService, pydicom_test_files: Path,
                                                 tmp_path: Path) -> None:
    sops = _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 3)
    hot_file = mirrored.settings.home / "tiers/hot" / _key(3, sops[0])
    original = hot_file.read_bytes()
    hot_file.unlink()
    report = mirrored.verify(repair=False)
    assert (report.missing, report.repaired, report.remaining) == (1, 0, 1)
    state, _replica, why = _copies(mirrored, sops[0])["hot"]
    assert state == "missing" and why is not None and "gone" in why

    # Marked: reads go to the replica, never to the missing copy.
    refs = {r.sop_uid: r for r in mirrored.instances_to_read(_study(3))}
    assert refs[sops[0]].tier == "mirror" and refs[sops[1]].tier == "hot"
    assert mirrored.read(refs[sops[0]]) == original

    report = mirrored.verify()
    assert (report.missing, report.repaired, report.remaining) == (1, 1, 0)
    assert hot_file.read_bytes() == original
    assert mirrored.verify().clean


def test_without_a_replica_a_bad_copy_is_reported_kept_and_never_served(tmp_path: Path, catalog_url: str,
                                                                         pydicom_test_files: Path) -> None:
    home = tmp_path / "home"
    _config_with(home, catalog_url, replicas=None)
    svc = _open(home)
    try:
        sops = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, 4)
        hot_file = home / "tiers/hot" / _key(4, sops[2])
        _flip(hot_file)
        corrupt = hot_file.read_bytes()
        report = svc.verify()
        assert (report.bad, report.repaired, report.remaining) == (1, 0, 1)
        assert "no other verified copy" in report.problems[0].kept_because
        assert hot_file.read_bytes() == corrupt  # kept for forensics, never deleted
        assert _copies(svc, sops[2])["hot"][0] == "bad"
        assert sops[2] not in {r.sop_uid for r in svc.instances_to_read(_study(4)) if not r.problem}
        [bad] = [r for r in svc.instances_to_read(_study(4)) if r.sop_uid == sops[2]]
        with pytest.raises(IntegrityError, match="no verified copy"):  # listed (a retrieval reports it), never served
            svc.read(bad)
        # A second run reports it again (it is not fixed), without a second audit entry.
        assert svc.verify().remaining == 1
        assert _audit_actions(svc).count("fixity.bad") == 1
    finally:
        svc.close()
    result = CliRunner().invoke(ilm_app, ["verify", "--home", str(home)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    assert "1 bad" in result.output and "still bad, missing or unreadable" in result.output
    assert hot_file.read_bytes() == corrupt


def test_sample_percentage_is_respected_and_seeded(mirrored: ArchiveService, pydicom_test_files: Path,
                                                   tmp_path: Path) -> None:
    _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 5, n=10)  # 20 copies
    report = mirrored.verify(sample_percent=25, seed=7, tier="hot")
    assert (report.candidates, report.objects) == (10, 3)  # 25% of 10, rounded up
    ids = [(i, 100) for i in range(1000)]
    a, b = sample_ids(ids, 10, seed=42), sample_ids(ids, 10, seed=42)
    assert a == b and len(a) == 100 and a != sample_ids(ids, 10, seed=43)
    assert sample_ids(ids, 100, seed=None) == ids
    # The same seed over the same catalog checks the same copies.
    with mirrored.catalog.read() as c:
        before = dict(c.execute(sa.text("SELECT id, verified_at FROM locations")).all())
    mirrored.verify(sample_percent=25, seed=7, tier="hot")
    with mirrored.catalog.read() as c:
        after = dict(c.execute(sa.text("SELECT id, verified_at FROM locations")).all())
    assert sum(1 for k in before if before[k] != after[k]) == 3


def test_usage_errors_exit_2_and_change_nothing(mirrored: ArchiveService) -> None:
    home = str(mirrored.settings.home)
    runner = CliRunner()
    for args, what in ((["--sample", "0"], "--sample 0"), (["--sample", "150"], "--sample 150"),
                       (["--tier", "nope"], "no tier named 'nope'")):
        result = runner.invoke(ilm_app, ["verify", "--home", home, *args], env={"COLUMNS": "200"})
        assert result.exit_code == 2 and what in result.output, result.output
    result = runner.invoke(ilm_app, ["verify", "--home", home, "--json"])
    assert result.exit_code == 0 and '"objects": 0' in result.output


def test_replica_configuration_errors_name_the_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    cases = [
        ("nope", "", "no tier named 'nope'"),
        ("hot", "", "its own replica"),
        ("mirror", '[tiers.mirror]\narchive = true\n', "not archive"),
    ]
    for i, (replica, _extra, message) in enumerate(cases):
        home = tmp_path / f"h{i}"
        path = _config_with(home, url, replicas=replica)
        if "archive" in message:
            path.write_text(path.read_text().replace('path = "tiers/mirror"', 'path = "tiers/mirror"\narchive = true'))
        with pytest.raises(ConfigError, match=rf"key 'tiers\.hot\.replicas': .*{message}"):
            load_settings(home=home, env={})


def test_moves_keep_the_replica_and_purge_deletes_every_copy(mirrored: ArchiveService, pydicom_test_files: Path,
                                                             tmp_path: Path) -> None:
    sops = _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 6, n=2)
    policy = tmp_path / "policy.yaml"
    policy.write_text("name: t\nrules:\n  - id: to-warm\n    when:\n      current_tier: hot\n"
                      "    action: {transition: warm}\n")
    plan = mirrored.plan(policy, as_of=date.today() + timedelta(days=60), by="alice")
    assert [(a["action"], a["tier"], a["studies"]) for a in plan.plan.summary["actions"]] == [("transition", "warm", 1)]
    report = mirrored.apply(plan.plan.id, approved_by="bob")
    assert report.done == 1 and not report.failed
    for sop in sops:
        assert _copies(mirrored, sop) == {"warm": ("verified", False, None), "mirror": ("verified", True, None)}
    detail = mirrored.study(_study(6))
    assert detail is not None and detail.summary.tiers == ("mirror", "warm")
    with mirrored.catalog.read() as c:
        assert c.execute(sa.text("SELECT tiers FROM studies")).scalar_one() == "warm"
    # Planned again: the study is on its target, the replica does not make it look elsewhere.
    again = mirrored.plan(policy, as_of=date.today() + timedelta(days=60), by="alice")
    assert again.plan.summary["actions"] == []
    # A policy cannot target the replica tier.
    policy.write_text(policy.read_text().replace("transition: warm", "transition: mirror"))
    with pytest.raises(Exception, match="mirror"):
        mirrored.plan(policy, as_of=date.today(), by="alice")

    assert retention.expire_study(mirrored.catalog, _study(6), quarantine=timedelta(0), by="alice")
    purged = mirrored.purge(by="bob")
    assert purged.purged == [_study(6)]
    for tier in ("hot", "warm", "mirror"):
        folder = mirrored.settings.home / "tiers" / tier
        assert not [p for p in folder.rglob("*") if p.is_file()], tier


def test_scrub_checks_copies_due_oldest_first_and_repairs(mirrored: ArchiveService, pydicom_test_files: Path,
                                                          tmp_path: Path) -> None:
    sops = _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 7, n=2)
    status = mirrored.fixity_status()
    assert (status.verified, status.due, status.bad) == (4, 0, 0)  # checked at ingest: nothing due
    old = datetime.now(timezone.utc) - timedelta(days=40)
    with mirrored.catalog.write() as c:
        c.execute(sa.text("UPDATE locations SET verified_at = :t"), {"t": old})
    _flip(mirrored.settings.home / "tiers/mirror" / _key(7, sops[0]))
    assert mirrored.fixity_status().due == 4
    scrub = Scrubber(mirrored.catalog, mirrored.settings, mirrored.tier)
    first = scrub.step()
    assert (first.objects, first.bad, first.repaired) == (4, 1, 1)
    assert first.problems[0].tier == "mirror" and first.problems[0].repaired_from == "hot"
    assert scrub.step().objects == 0  # every copy checked within the interval
    s = scrub.status()
    assert (s.checked, s.bad, s.repaired, s.running) == (4, 1, 1, False)
    assert mirrored.fixity_status().due == 0


def _corrupt_s3(sw: SeaweedFS, bucket: str, key: str) -> bytes:
    """Replace an object behind ilm's back with one flipped byte (as bit rot or a
    stray tool would leave it): the server keeps no checksum for it then."""
    client = sw.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[300] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    return bytes(data)


@pytest.mark.s3
def test_s3_replica_repairs_the_filesystem_and_the_filesystem_repairs_s3(
    tmp_path: Path, catalog_url: str, s3_server: SeaweedFS, pydicom_test_files: Path
) -> None:
    bucket = s3_server.new_bucket_name("fixity")
    home = tmp_path / "home"
    path = _config_with(home, catalog_url, replicas="cloud", extra=f"""
[tiers.cloud]
kind = "s3"
bucket = "{bucket}"
prefix = "r"
endpoint_url = "{s3_server.endpoint_url}"
access_key_id = "{s3_server.access_key}"
secret_access_key = "{s3_server.secret_key}"
create_bucket = true
""")
    assert path.exists()
    svc = _open(home)
    try:
        sops = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, 8)
        for sop in sops:
            assert _copies(svc, sop)["cloud"] == ("verified", True, None)
        hot_file = home / "tiers/hot" / _key(8, sops[0])
        original = hot_file.read_bytes()
        _flip(hot_file)
        s3_key = "r/" + _key(8, sops[1])
        good_s3 = s3_server.client().get_object(Bucket=bucket, Key=s3_key)["Body"].read()
        _corrupt_s3(s3_server, bucket, s3_key)
        s3_server.client().delete_object(Bucket=bucket, Key="r/" + _key(8, sops[2]))

        report = svc.verify()
        assert (report.bad, report.missing, report.repaired, report.remaining) == (2, 1, 3, 0), report.problems
        fates = {(p.tier, p.state, p.repaired_from) for p in report.problems}
        assert fates == {("hot", "bad", "cloud"), ("cloud", "bad", "hot"), ("cloud", "missing", "hot")}
        assert hot_file.read_bytes() == original
        held = s3_server.client().get_object(Bucket=bucket, Key=s3_key)["Body"].read()
        assert hashlib.sha256(held).hexdigest() == hashlib.sha256(good_s3).hexdigest()
        assert svc.verify().clean
    finally:
        svc.close()


def test_replica_tiers_are_outside_the_lifecycle(tmp_path: Path) -> None:
    """Listed last, a replica tier is still no next tier for cooling, watermarks or spill."""
    from ilm.lifecycle.tiering import tier_roles
    from ilm.lifecycle.watermark import _next_tier
    from ilm.spill import lower_tiers

    home = tmp_path / "home"
    _config_with(home, f"sqlite:///{tmp_path / 'c.sqlite'}", replicas="mirror")
    settings = load_settings(home=home, env={})
    assert list(settings.tiers) == ["hot", "warm", "mirror"]
    assert settings.lifecycle_tiers == ["hot", "warm"] and settings.replica_tiers == {"mirror"}
    assert [r.name for r in tier_roles(settings)] == ["hot", "warm"]
    assert _next_tier(settings, "warm") is None and _next_tier(settings, "hot") == "warm"
    assert lower_tiers(settings, "hot") == ["warm"]


def test_ilm_serve_scrubs_and_repairs_in_the_background(tmp_path: Path, catalog_url: str,
                                                        pydicom_test_files: Path) -> None:
    """A real ilm serve process: copies last checked 40 days ago are re-read, the
    flipped one is repaired from the replica; a status line goes to the log."""
    import os
    import subprocess
    import sys
    import time

    from support.servers import free_port, wait_port

    home = tmp_path / "home"
    _config_with(home, catalog_url, replicas="mirror", extra="\n[fixity]\nscrub_mb_per_s = 5\n")
    svc = _open(home)
    try:
        sops = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, 9, n=2)
        with svc.catalog.write() as c:
            c.execute(sa.text("UPDATE locations SET verified_at = :t"),
                      {"t": datetime.now(timezone.utc) - timedelta(days=40)})
    finally:
        svc.close()
    hot_file = home / "tiers/hot" / _key(9, sops[1])
    original = hot_file.read_bytes()
    _flip(hot_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ILM_")}
    dicom, http = free_port(), free_port()
    log = home / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ilm", "serve", "--home", str(home), "--host", "127.0.0.1",
                                 "--dicom-port", str(dicom), "--http-port", str(http), "--log-level", "INFO"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(http, timeout=60, proc=proc)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (hot_file.exists() and hot_file.read_bytes() == original):
            time.sleep(0.2)
        assert hot_file.read_bytes() == original, log.read_text(errors="replace")
        while time.monotonic() < deadline and "scrub: " not in log.read_text(errors="replace"):
            time.sleep(0.2)
        text = log.read_text(errors="replace")
        assert "fixity: scrubbing at 5 MB/s, each copy every 30 days" in text
        assert "scrub: " in text and "repaired" in text, text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    svc = _open(home)
    try:
        assert _copies(svc, sops[1])["hot"] == ("verified", False, None)
        assert "fixity.repair" in _audit_actions(svc)
        assert svc.fixity_status().due == 0
    finally:
        svc.close()


def test_packed_copies_are_checked_by_their_byte_range(tmp_path: Path, catalog_url: str,
                                                       pydicom_test_files: Path) -> None:
    """A study packed into one object: the instance whose range holds the flipped
    byte is bad, the others are good; the only copy is kept and not served."""
    from ilm.lifecycle.move import move_study

    home = tmp_path / "home"
    path = _config_with(home, catalog_url, replicas=None)
    path.write_text(path.read_text().replace('[tiers.warm]\nkind = "filesystem"',
                                             '[tiers.warm]\npack_studies = true\nkind = "filesystem"'))
    svc = _open(home)
    try:
        sops = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, 10)
        assert move_study(svc.catalog, svc.tier, _study(10), "warm").ok
        with svc.catalog.read() as c:
            key, offset = c.execute(sa.text(
                "SELECT l.object_key, l.pack_offset FROM locations l JOIN instances i ON i.id = l.instance_pk "
                "WHERE i.sop_uid = :u AND l.tier = 'warm'"), {"u": sops[1]}).one()
        assert key.endswith(".pack")
        _flip(home / "tiers/warm" / key, at=int(offset) + 100)

        report = svc.verify()
        assert (report.objects, report.ok, report.bad, report.repaired, report.remaining) == (3, 2, 1, 0, 1)
        (problem,) = report.problems
        assert problem.sop_uid == sops[1] and "no other verified copy" in problem.kept_because  # tests/test_fixity_packs.py
        assert (home / "tiers/warm" / key).exists()
        assert {r.sop_uid for r in svc.instances_to_read(_study(10)) if not r.problem} == {sops[0], sops[2]}
    finally:
        svc.close()


def test_an_identical_resend_repairs_a_marked_copy(tmp_path: Path, catalog_url: str,
                                                   pydicom_test_files: Path) -> None:
    """No replica: the bad copy waits; importing the same file again (a backup, the
    modality's copy) repairs it, and a missing one too."""
    home = tmp_path / "home"
    _config_with(home, catalog_url, replicas=None)
    svc = _open(home)
    try:
        sops = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, 11)
        bad, gone = home / "tiers/hot" / _key(11, sops[0]), home / "tiers/hot" / _key(11, sops[1])
        originals = bad.read_bytes(), gone.read_bytes()
        _flip(bad)
        gone.unlink()
        assert svc.verify().remaining == 2
        for i in (0, 1):
            r = svc.ingest_path(tmp_path / f"in-11-{i}.dcm")
            assert r.status.value == "duplicate" and "repaired 1 bad or missing copies" in (r.reason or ""), r
        assert (bad.read_bytes(), gone.read_bytes()) == originals
        assert svc.verify().clean
        assert _audit_actions(svc).count("fixity.repair") == 2
        # An ordinary duplicate says nothing of repairs.
        assert svc.ingest_path(tmp_path / "in-11-2.dcm").reason == "already stored, identical"
    finally:
        svc.close()


def test_replica_tier_down_at_ingest_is_caught_up_by_verify(tmp_path: Path, catalog_url: str,
                                                           pydicom_test_files: Path) -> None:
    home = tmp_path / "home"
    _config_with(home, catalog_url, replicas="mirror")
    (home / "tiers").mkdir(parents=True)
    (home / "tiers/mirror").write_text("not a folder: the replica tier cannot be opened")
    svc = _open(home)
    try:
        sops = _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, 12, n=2)  # stored all the same
        assert all(set(_copies(svc, s)) == {"hot"} for s in sops)
        down = svc.verify()
        assert down.clean and down.replicated == 0 and len(down.replica_problems) == 2
        (home / "tiers/mirror").unlink()
        up = svc.verify()
        assert up.replicated == 2 and not up.replica_problems
        assert all(_copies(svc, s)["mirror"] == ("verified", True, None) for s in sops)
        assert svc.verify().replicated == 0
    finally:
        svc.close()


def test_archive_tiers_are_skipped_unless_named_and_an_unreachable_tier_marks_nothing(
    tmp_path: Path, catalog_url: str, pydicom_test_files: Path
) -> None:
    from ilm.lifecycle.move import move_study

    home = tmp_path / "home"
    _config_with(home, catalog_url, replicas=None, extra='\n[tiers.tape]\nkind = "filesystem"\npath = "tiers/tape"\n'
                                                         'archive = true\nfsync = false\n')
    svc = _open(home)
    try:
        _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, 13, n=2)
        _ingest_study(svc, pydicom_test_files / "CT_small.dcm", tmp_path, 14, n=2)
        assert move_study(svc.catalog, svc.tier, _study(13), "tape").ok
        assert move_study(svc.catalog, svc.tier, _study(14), "warm").ok
        default = svc.verify()
        assert (default.objects, default.skipped_archive, default.tiers) == (2, {"tape": 2}, ["hot", "warm", "mirror"])
        named = svc.verify(tier="tape")
        assert (named.objects, named.ok) == (2, 2)

        (home / "tiers/warm").rename(home / "tiers/warm-away")  # the tier's folder is gone: unreachable
        away = svc.verify(tier="warm")
        assert (away.objects, away.unreadable, away.missing, away.remaining) == (2, 2, 0, 2)
        assert all(p.state == "unreadable" and "not marked" in p.kept_because for p in away.problems)
        with svc.catalog.read() as c:
            assert c.execute(sa.text("SELECT count(*) FROM locations WHERE state <> 'verified'")).scalar_one() == 0
    finally:
        svc.close()
    result = CliRunner().invoke(ilm_app, ["verify", "--home", str(home)], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "skipped archive tier 'tape' (2 copies)" in result.output, result.output
    assert "2 unreadable" in " ".join(result.output.split()), result.output


def test_the_scrub_rests_an_unreachable_tier_and_scrubs_the_others(mirrored: ArchiveService, pydicom_test_files: Path,
                                                                   tmp_path: Path) -> None:
    _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 15, n=2)
    with mirrored.catalog.write() as c:
        c.execute(sa.text("UPDATE locations SET verified_at = :t"), {"t": datetime.now(timezone.utc) - timedelta(days=40)})
        c.execute(sa.text("UPDATE locations SET verified_at = :t WHERE tier = 'mirror'"),
                  {"t": datetime.now(timezone.utc) - timedelta(days=50)})  # the oldest: checked first
    home = mirrored.settings.home
    (home / "tiers/mirror").rename(home / "tiers/mirror-away")
    scrub = Scrubber(mirrored.catalog, mirrored.settings, mirrored.tier)
    first = scrub.step()
    assert (first.objects, first.unreadable) == (4, 2)  # mirror's 2 unreadable, hot's 2 ok
    second = scrub.step()
    assert second.objects == 0  # hot is done; mirror rests instead of being read again at once
    with mirrored.catalog.read() as c:
        assert c.execute(sa.text("SELECT count(*) FROM locations WHERE state <> 'verified'")).scalar_one() == 0


def test_verify_status_counts_copies_by_state_without_reading(mirrored: ArchiveService, pydicom_test_files: Path,
                                                               tmp_path: Path) -> None:
    sops = _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 16, n=2)
    (mirrored.settings.home / "tiers/hot" / _key(16, sops[0])).unlink()
    mirrored.verify(repair=False)
    (mirrored.settings.home / "tiers/hot" / _key(16, sops[1])).unlink()  # not noticed: --status reads nothing
    home = str(mirrored.settings.home)
    result = CliRunner().invoke(ilm_app, ["verify", "--home", home, "--status", "--json"])
    assert result.exit_code == 1, result.output  # a missing copy remains
    import json

    assert json.loads(result.output) == {"verified": 3, "bad": 0, "missing": 1, "due": 0, "scrub_interval_days": 30}
    result = CliRunner().invoke(ilm_app, ["verify", "--home", home, "--status"], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "3 verified, 0 bad, 1 missing" in result.output, result.output


def test_a_copy_put_back_by_hand_is_good_again_and_audited(mirrored: ArchiveService, pydicom_test_files: Path,
                                                          tmp_path: Path) -> None:
    sops = _ingest_study(mirrored, pydicom_test_files / "CT_small.dcm", tmp_path, 17, n=1)
    f = mirrored.settings.home / "tiers/hot" / _key(17, sops[0])
    _flip(f)
    assert mirrored.verify(repair=False).bad == 1
    _flip(f)  # the same byte flipped back: the original bytes
    again = mirrored.verify(repair=False)
    assert again.clean and again.ok == 2
    assert _copies(mirrored, sops[0])["hot"] == ("verified", False, None)
    assert [a for a in _audit_actions(mirrored) if a.startswith("fixity.")] == ["fixity.bad", "fixity.verified"]
