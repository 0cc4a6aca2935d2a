"""Capacity watermarks: fill a small tier past its high watermark, run, and it
ends under its low one with the least recently read studies moved down;
studies a policy keep rule pins stay; what the preview shows is what runs.

The thresholds are tested both ways: as sizes (bytes the catalog holds on
the tier) and as a percentage of a real, small file system (a tmpfs, when
the tests run as root).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from conftest import write_config
from typer.testing import CliRunner

import ilm.lifecycle.watermark_plan as wmp
from ilm.catalog.copies import refresh_study_tiers
from ilm.cli import app
from ilm.config import load_settings
from ilm.lifecycle.limits import MaintenanceWindow
from ilm.lifecycle.move import move_study, recover_moves
from ilm.lifecycle.watermark_plan import (
    Candidate,
    Kind,
    Usage,
    WatermarkError,
    limits,
    parse_threshold,
    reserve_bytes,
    select,
)
from ilm.service import ArchiveService

UTC = UTC
T0 = datetime(2024, 1, 1, tzinfo=UTC)


# -- the pure part ---------------------------------------------------------------------


def test_thresholds() -> None:
    assert parse_threshold("85%").percent == 85 and parse_threshold(" 85% ").size is None
    assert parse_threshold("500GB").size == 500 * 1000**3
    assert parse_threshold("2GiB").size == 2 * 1024**3
    for bad in ("0%", "101%", "x%", "lots"):
        with pytest.raises(WatermarkError):
            parse_threshold(bad)
    fs = Usage(used=500, capacity=1000, measured="file system")
    lim = limits("80%", "60%", fs, reserve=7)
    assert (lim.high, lim.low, lim.reserve) == (800, 600, 7)
    assert limits("80%", None, fs, 0).low == 800  # low defaults to high
    assert limits("90%", "700B", fs, 0).low == 700  # a size next to a percentage counts on the file system
    with pytest.raises(WatermarkError, match="above the high"):
        limits("60%", "80%", fs, 0)
    with pytest.raises(WatermarkError, match="percentage of a file system"):
        limits("80%", None, Usage(5, None, "catalog"), 0)


def test_reserve_keeps_a_day_at_night_and_an_hour_by_day() -> None:
    day, night = datetime(2024, 1, 1, 14, 0), datetime(2024, 1, 1, 23, 30)
    assert reserve_bytes(48, night) == 48 * 1000**3
    assert reserve_bytes(48, day) == 2 * 1000**3
    assert reserve_bytes(48, datetime(2024, 1, 1, 5, 59)) == 48 * 1000**3  # still night at 05:59
    assert reserve_bytes(48, datetime(2024, 1, 1, 6, 0)) == 2 * 1000**3
    window = MaintenanceWindow(dtime(1, 0), dtime(4, 0))  # a configured maintenance window is the night
    assert reserve_bytes(48, night, window) == 2 * 1000**3
    assert reserve_bytes(48, datetime(2024, 1, 1, 2, 0), window) == 48 * 1000**3
    assert reserve_bytes(0, night) == 0


def _cands(*specs: tuple[str, int, str]) -> list[Candidate]:
    return [Candidate(uid, size, T0 + timedelta(days=i), Kind.MOVE, 1, pinned)
            for i, (uid, size, pinned) in enumerate(specs)]


def test_select_takes_least_recently_read_until_under_low() -> None:
    usage = Usage(1000, None, "catalog")
    lim = limits("900B", "600B", usage, reserve=0)
    cands = _cands(("a", 100, ""), ("b", 150, "kept by rule 'teaching'"), ("c", 100, ""), ("d", 150, ""),
                   ("e", 100, ""))
    sel = select("hot", usage, lim, iter(cands))
    assert sel.triggered and sel.to_free == 400
    assert [c.study_uid for c in sel.chosen] == ["a", "c", "d", "e"]  # b is pinned, passed over
    assert [c.study_uid for c in sel.passed_over] == ["b"]
    assert sel.freed == 450 and sel.used_after == 550 and sel.ends_under_low
    # Not past the high watermark: nothing, and the candidates are not even read.
    quiet = select("hot", Usage(850, None, "catalog"), lim, iter(()))
    assert not quiet.triggered and quiet.chosen == []
    # The reserve counts as used: 850 + 100 > 900.
    busy = select("hot", Usage(850, None, "catalog"), limits("900B", "600B", usage, reserve=100), iter(cands))
    assert busy.triggered and busy.to_free == 350 and busy.used_after + 100 <= 600


def test_select_stops_reading_once_enough_is_chosen() -> None:
    usage = Usage(1000, None, "catalog")
    seen: list[str] = []

    def stream() -> Iterator[Candidate]:
        for c in _cands(*[(f"s{i}", 100, "") for i in range(100)]):
            seen.append(c.study_uid)
            yield c

    sel = select("hot", usage, limits("900B", "700B", usage, 0), stream())
    assert len(sel.chosen) == 3 and len(seen) <= 4


def test_select_reports_when_it_cannot_get_under_low() -> None:
    usage = Usage(1000, None, "catalog")
    sel = select("hot", usage, limits("900B", "100B", usage, 0), iter(_cands(("a", 100, ""), ("b", 800, "pinned"))))
    assert sel.chosen[0].study_uid == "a" and not sel.ends_under_low


def test_watermark_plan_module_is_pure() -> None:
    tree = ast.parse(Path(wmp.__file__).read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
           {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in mods if m and m.startswith(("ilm.catalog", "ilm.storage", "sqlalchemy", "shutil", "os"))}


# -- on a real archive ---------------------------------------------------------------------

STUDIES = 10


def _service(tmp_path: Path, catalog_url: str, hot: str, extra: str = "") -> ArchiveService:
    home = tmp_path / "home"
    write_config(home, catalog_url, extra=extra)
    toml = (home / "ilm.toml").read_text().replace('cost_per_gb_month = 0.10\n', 'cost_per_gb_month = 0.10\n' + hot, 1)
    (home / "ilm.toml").write_text(toml)
    return ArchiveService.open(load_settings(home=home, env={}))


def _fill(service: ArchiveService, src: Path, tmp: Path, n: int = STUDIES, per: int = 2, base: str = "1.2.826.0.1.3680043.10.88") -> list[str]:
    """``n`` studies of ``per`` instances, each read at a different moment: study i
    was read i days after T0, except that reads are shuffled (not UID order)."""
    ds = pydicom.dcmread(src)
    folder = tmp / f"in-{base}"
    folder.mkdir()
    uids = []
    for s in range(n):
        ds.StudyInstanceUID = f"{base}.{s + 1}"
        ds.SeriesInstanceUID = f"{base}.{s + 1}.1"
        for i in range(per):
            ds.SOPInstanceUID = f"{base}.{s + 1}.1.{i + 1}"
            ds.save_as(folder / f"{s}-{i}.dcm")
        uids.append(str(ds.StudyInstanceUID))
    report = service.import_paths([folder])
    assert report.stored == n * per
    order = [uids[(7 * k) % n] for k in range(n)]  # 7 is prime to 10: a permutation
    with service.catalog.write() as c:
        for day, uid in enumerate(order):
            c.execute(sa.text("UPDATE studies SET last_accessed_at = :t WHERE study_uid = :u"),
                      {"t": T0 + timedelta(days=day), "u": uid})
    return order  # least recently read first


def _tiers(service: ArchiveService) -> dict[str, str]:
    with service.catalog.read() as c:
        return {r[0]: r[1] for r in c.execute(sa.text("SELECT study_uid, tiers FROM studies"))}


def _hot_bytes(service: ArchiveService) -> int:
    with service.catalog.read() as c:
        return int(c.execute(sa.text("SELECT coalesce(sum(size_bytes), 0) FROM locations WHERE tier = 'hot' "
                                     "AND state = 'verified'")).scalar_one())


def test_run_ends_under_low_with_least_recently_read_moved(tmp_path: Path, catalog_url: str,
                                                           pydicom_test_files: Path) -> None:
    # 10 studies of ~78 KB: ~782 KB on hot. High 600 KB, low 400 KB: 5 studies must go.
    service = _service(tmp_path, catalog_url, 'high_watermark = "600KB"\nlow_watermark = "400KB"\n')
    try:
        lru = _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path)
        size = _hot_bytes(service) // STUDIES
        (st,) = service.watermarks()
        assert st.triggered and st.usage is not None and st.usage.measured == "catalog"
        # The preview: stored nowhere, changes nothing.
        (preview,) = service.watermark_plan(by="test", store=False)
        assert preview.plan is not None and service.plans() == []
        expected = lru[:-(-(_hot_bytes(service) - 400_000) // size)]
        assert [a["study_uid"] for a in preview.actions if a["decision"] == "transition"] == sorted(expected)
        assert all(a["target_tier"] == "warm" and a["rule_id"] == "watermark:hot" for a in preview.actions)
        assert set(_tiers(service).values()) == {"hot"}
        # The run does exactly what the preview showed.
        ((wp, report),) = service.watermark_run(by="test")
        assert report is not None and report.done == len(expected) and not report.failed and not report.skipped
        assert [(a["study_uid"], a["decision"], a["target_tier"]) for a in wp.actions] == \
               [(a["study_uid"], a["decision"], a["target_tier"]) for a in preview.actions]
        tiers = _tiers(service)
        assert {u for u, t in tiers.items() if t == "warm"} == set(expected)
        assert {u for u, t in tiers.items() if t == "hot"} == set(lru[len(expected):])
        assert _hot_bytes(service) <= 400_000
        (after,) = service.watermarks()
        assert not after.triggered
        # A plan like any other: listed, shown, audited with its rule.
        assert wp.plan is not None
        plan = service.plan_get(wp.plan.id)
        assert plan is not None and plan.state == "applied" and plan.policy_name == "watermark:hot"
        assert plan.summary["watermark"]["ends_under_low"] is True
        actions = {e.action for e in service.audit(plan_id=wp.plan.id)}
        assert {"plan.create", "plan.apply", "action.done"} <= actions
        assert all(e.rule_id == "watermark:hot" for e in service.audit(plan_id=wp.plan.id))
        # Moved studies read back from warm.
        for uid in expected:
            assert {r.tier for r in service.instances_to_read(uid)} == {"warm"}
        # Under the high watermark: a second run plans nothing.
        assert [wp.plan for wp, _r in service.watermark_run(by="test")] == [None]
    finally:
        service.close()


POLICY = """
name: site
rules:
  - id: teaching-stays-hot
    when: {labels: teaching}
    action: keep
"""


def test_pinned_studies_stay_and_holds_do_not_stop_moves(tmp_path: Path, catalog_url: str,
                                                          pydicom_test_files: Path) -> None:
    service = _service(tmp_path, catalog_url, 'high_watermark = "600KB"\nlow_watermark = "400KB"\n',
                       extra='\n[lifecycle]\nschedule_policy = "policy.yaml"\n')
    try:
        (service.settings.home / "policy.yaml").write_text(POLICY)
        lru = _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path)
        service.label(lru[0], "teaching", present=True, by="test")  # the least recently read is pinned
        service.hold_add("study", lru[1], "litigation 42", "test")  # the next one is held
        ((wp, report),) = service.watermark_run(by="test")
        assert report is not None and not report.failed
        tiers = _tiers(service)
        assert tiers[lru[0]] == "hot"  # pinned by the keep rule
        assert tiers[lru[1]] == "warm"  # a legal hold does not stop a move
        moved = [u for u in lru if tiers[u] == "warm"]
        assert moved == lru[1:len(moved) + 1]  # the next least recently read instead
        assert _hot_bytes(service) <= 400_000
        kept = [a for a in wp.actions if a["decision"] == "keep"]
        assert [a["study_uid"] for a in kept] == [lru[0]]
        assert json.loads(kept[0]["vetoes"])[0]["protection"] == "policy_keep_rule"
        assert "teaching-stays-hot" in kept[0]["reason"]
        assert wp.plan is not None and wp.plan.summary["vetoes"] == {"policy_keep_rule": 1}
    finally:
        service.close()


def test_cache_copies_are_dropped_not_moved(tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    """A study whose copies on hot are all verified on warm too: the run drops the hot copies."""
    service = _service(tmp_path, catalog_url, 'high_watermark = "600KB"\nlow_watermark = "400KB"\n')
    try:
        lru = _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path)
        cached = lru[0]
        # Make warm hold a verified copy of the least recently read study, as a restore or a promotion leaves it.
        assert move_study(service.catalog, service.tier, cached, "warm").ok
        hot, warm = service.tier("hot"), service.tier("warm")
        with service.catalog.write() as c:
            rows = c.execute(sa.text(
                "SELECT l.instance_pk, l.object_key, l.size_bytes, l.sha256 FROM locations l JOIN instances i "
                "ON i.id = l.instance_pk JOIN studies s ON s.id = i.study_pk WHERE s.study_uid = :u"),
                {"u": cached}).all()
            for pk, key, size, sha in rows:
                hot.put(key, warm.get(key), sha)
                c.execute(sa.text("INSERT INTO locations (instance_pk, tier, object_key, size_bytes, sha256, state, "
                                  "created_at, verified_at) VALUES (:p, 'hot', :k, :z, :s, 'verified', :t, :t)"),
                          {"p": pk, "k": key, "z": size, "s": sha, "t": datetime.now(UTC)})
            refresh_study_tiers(c, [r[0] for r in rows])
        assert _tiers(service)[cached] == "hot\\warm"
        moves_before = _count(service, "SELECT count(*) FROM moves WHERE state = 'done'")
        ((wp, report),) = service.watermark_run(by="test")
        assert report is not None and not report.failed
        decisions = {a["study_uid"]: a["decision"] for a in wp.actions}
        assert decisions[cached] == "drop"
        assert _tiers(service)[cached] == "warm"
        assert not list(service.settings.resolve("tiers/hot").rglob(f"{cached}/*/*.dcm"))
        assert {r.tier for r in service.instances_to_read(cached)} == {"warm"}
        # The drop went through the journal, and copied nothing: warm holds what it held.
        assert _count(service, "SELECT count(*) FROM moves WHERE state = 'dropping'") == 0
        assert _count(service, "SELECT count(*) FROM moves WHERE state = 'done'") - moves_before >= len(rows)
        assert _hot_bytes(service) <= 400_000
    finally:
        service.close()


def _count(service: ArchiveService, sql: str) -> int:
    with service.catalog.read() as c:
        return int(c.execute(sa.text(sql)).scalar_one())


def test_plan_only_then_apply_and_resume(tmp_path: Path, catalog_url: str, pydicom_test_files: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service(tmp_path, catalog_url, 'high_watermark = "600KB"\nlow_watermark = "400KB"\n')
    try:
        _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path)
        (wp,) = service.watermark_plan(by="test")
        assert wp.plan is not None
        plan_id = wp.plan.id
        assert service.plan_get(plan_id).state == "planned"  # type: ignore[union-attr]
        # The apply is interrupted after the first study (a crash mid-run).
        import ilm.lifecycle.watermark as wm

        real_move = wm.move_study
        calls = [0]

        class Crash(BaseException):
            pass

        def crashing(*a: object, **k: object) -> object:
            calls[0] += 1
            if calls[0] == 2:
                raise Crash()
            return real_move(*a, **k)  # type: ignore[arg-type]

        monkeypatch.setattr(wm, "move_study", crashing)
        with pytest.raises(Crash):
            service.apply(plan_id, approved_by="admin")
        monkeypatch.undo()
        assert service.plan_get(plan_id).state == "applying"  # type: ignore[union-attr]
        report = service.apply(plan_id, approved_by="admin")  # resume
        assert report.done == len(wp.actions) - 1 and not report.failed
        assert service.plan_get(plan_id).state == "applied"  # type: ignore[union-attr]
        assert _hot_bytes(service) <= 400_000
        assert not recover_moves(service.catalog, service.tier).problems
    finally:
        service.close()


def test_a_study_read_since_the_plan_is_skipped(tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    service = _service(tmp_path, catalog_url, 'high_watermark = "600KB"\nlow_watermark = "400KB"\n')
    try:
        lru = _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path)
        (wp,) = service.watermark_plan(by="test")
        assert wp.plan is not None
        with service.catalog.write() as c:
            c.execute(sa.text("UPDATE studies SET last_accessed_at = :t WHERE study_uid = :u"),
                      {"t": datetime.now(UTC), "u": lru[0]})
        report = service.apply(wp.plan.id, approved_by="admin")
        assert [u for u, _why in report.skipped] == [lru[0]]
        assert "read" in report.skipped[0][1]
        assert _tiers(service)[lru[0]] == "hot"
    finally:
        service.close()


def test_no_lower_tier_and_bad_thresholds_are_reported(tmp_path: Path, catalog_url: str,
                                                       pydicom_test_files: Path) -> None:
    home = tmp_path / "home"
    write_config(home, catalog_url)
    toml = (home / "ilm.toml").read_text()
    toml = toml.replace('cost_per_gb_month = 0.03\n', 'cost_per_gb_month = 0.03\nhigh_watermark = "1KB"\n')
    (home / "ilm.toml").write_text(toml)
    service = ArchiveService.open(load_settings(home=home, env={}))
    try:
        uid = _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=1)[0]
        assert move_study(service.catalog, service.tier, uid, "warm").ok
        ((wp, report),) = service.watermark_run(by="test")  # warm is the last tier: nowhere to go
        assert report is not None and report.done == 0
        assert [a["decision"] for a in wp.actions] == ["keep"]
        assert "no tier below 'warm'" in wp.actions[0]["reason"]
        assert wp.plan is not None and not wp.plan.summary["watermark"]["ends_under_low"]
    finally:
        service.close()


# -- percent of a real file system -------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "small-disk"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_percent_watermarks_on_a_real_file_system(tmp_path: Path, catalog_url: str, small_disk: Path,
                                                   pydicom_test_files: Path) -> None:
    service = _service(tmp_path, catalog_url, 'high_watermark = "60%"\nlow_watermark = "30%"\n')
    try:
        toml = (service.settings.home / "ilm.toml").read_text().replace('path = "tiers/hot"', f'path = "{small_disk}"')
        (service.settings.home / "ilm.toml").write_text(toml)
        service.close()
        service = ArchiveService.open(load_settings(home=service.settings.home, env={}))
        lru = _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=18, per=2)  # ~1.4 MB of 2 MiB
        du = shutil.disk_usage(small_disk)
        assert du.used / (du.used + du.free) > 0.6
        (st,) = service.watermarks()
        assert st.triggered and st.usage is not None and st.usage.measured == "file system"
        ((wp, report),) = service.watermark_run(by="test")
        assert report is not None and not report.failed
        du = shutil.disk_usage(small_disk)
        assert du.used / (du.used + du.free) <= 0.30
        tiers = _tiers(service)
        moved = [u for u in lru if tiers[u] == "warm"]
        assert moved == lru[:len(moved)] and all(tiers[u] == "hot" for u in lru[len(moved):])
    finally:
        service.close()


def test_percent_watermark_on_s3_is_an_error_not_a_crash(tmp_path: Path, catalog_url: str) -> None:
    home = tmp_path / "home"
    write_config(home, catalog_url, extra="""
[tiers.cloud]
kind = "s3"
bucket = "some-bucket"
endpoint_url = "http://127.0.0.1:9"
high_watermark = "80%"
""")
    service = ArchiveService.open(load_settings(home=home, env={}))
    try:
        (st,) = service.watermarks()
        assert not st.triggered and "not on a file system" in st.error
        assert [wp.plan for wp in service.watermark_plan(by="t")] == [None]
    finally:
        service.close()


# -- the command line ----------------------------------------------------------------------


def test_cli_watermark(tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    service = _service(tmp_path, catalog_url, 'high_watermark = "600KB"\nlow_watermark = "400KB"\n')
    home = service.settings.home
    try:
        lru = _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path)
    finally:
        service.close()
    runner = CliRunner()
    r = runner.invoke(app, ["watermark", "--dry-run", "--json", "--home", str(home)])
    assert r.exit_code == 0, r.output
    (preview,) = json.loads(r.output)
    assert preview["triggered"] and preview["tier"] == "hot"
    planned = [a["study_uid"] for a in preview["actions"] if a["decision"] == "transition"]
    assert sorted(planned) == sorted(lru[:len(planned)])
    r = runner.invoke(app, ["watermark", "--dry-run", "--home", str(home)])
    assert r.exit_code == 0 and "over" in r.output and "preview (not stored)" in r.output
    r = runner.invoke(app, ["watermark", "--tier", "hot", "--json", "--home", str(home)])
    assert r.exit_code == 0, r.output
    (ran,) = json.loads(r.output)
    assert [a["study_uid"] for a in ran["actions"]] == [a["study_uid"] for a in preview["actions"]]
    assert ran["report"]["done"] == len(planned)
    r = runner.invoke(app, ["plan", "show", ran["plan_id"], "--home", str(home)])
    assert r.exit_code == 0 and "watermark:hot" in r.output
    r = runner.invoke(app, ["watermark", "--tier", "warm", "--home", str(home)])
    assert r.exit_code == 2 and "no high_watermark" in r.output


def test_serve_checks_watermarks_periodically(tmp_path: Path, catalog_url: str, pydicom_test_files: Path) -> None:
    """The loop ilm serve starts: a tier that passes its high watermark is brought under its low one."""
    import threading
    import time

    from ilm.cli.watermark import start_watermark_checks

    service = _service(tmp_path, catalog_url, 'high_watermark = "600KB"\nlow_watermark = "400KB"\n')
    stop = threading.Event()
    t = None
    try:
        _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=4)  # under the high watermark
        t = start_watermark_checks(service, stop, interval=0.2)
        assert t is not None
        time.sleep(0.5)
        assert service.plans() == []  # under the high watermark: nothing planned
        _fill(service, pydicom_test_files / "CT_small.dcm", tmp_path, n=6, base="1.2.826.0.1.3680043.10.89")
        # A check may run while the studies arrive: it brings hot under 400 KB, and what
        # arrives after stays under the high watermark. Either way hot ends under 600 KB.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            plans = service.plans()
            if plans and all(p.state == "applied" for p in plans) and not service.watermarks()[0].triggered:
                break
            time.sleep(0.1)
        assert 0 < _hot_bytes(service) <= 600_000
        plans = service.plans()
        assert plans and all(p.policy_name == "watermark:hot" and p.created_by == "ilm-watermark"
                             and p.state == "applied" for p in plans)
        assert all(p.summary["watermark"]["ends_under_low"] for p in plans)
    finally:
        stop.set()
        if t is not None:
            t.join(timeout=30)
        service.close()
