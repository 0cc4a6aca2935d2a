"""Access-based tiering: cooling-days moves, promotion on read, prefetch of priors on arrival."""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from ilm.catalog.access import AccessRow, record_accesses
from ilm.catalog.schema import studies
from ilm.cli import app
from ilm.config import load_settings
from ilm.lifecycle.move import move_study
from ilm.lifecycle.plan import make_plan, read_policy
from ilm.lifecycle.tiering import TIERING_POLICY
from ilm.policy import StudyFacts
from ilm.policy.tiering import (
    PrefetchRule,
    TierRole,
    cooling_decision,
    promotion_check,
    relevant_priors,
)
from ilm.service import ArchiveService

TODAY = date.today()
AS_OF = TODAY + timedelta(days=40)   # studies ingested today have been idle 40 days by then
NOW = datetime.now(UTC)


def _config(home: Path, catalog_url: str, *, hot: str = "", warm: str = "", cold: str = "", lifecycle: str = "") -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "ilm.toml").write_text(f"""
[catalog]
url = "{catalog_url}"

[lifecycle]
{lifecycle}

[tiers.hot]
kind = "filesystem"
path = "tiers/hot"
cost_per_gb_month = 0.10
fsync = false
{hot}

[tiers.warm]
kind = "filesystem"
path = "tiers/warm"
cost_per_gb_month = 0.03
fsync = false
{warm}

[tiers.cold]
kind = "filesystem"
path = "tiers/cold"
cost_per_gb_month = 0.01
fsync = false
{cold}
""")


def _open(tmp_path: Path, catalog_url: str, **tiers: str) -> ArchiveService:
    home = tmp_path / "home"
    _config(home, catalog_url, **tiers)
    return ArchiveService.open(load_settings(home=home, env={}))


@pytest.fixture
def src(pydicom_test_files: Path) -> Path:
    return pydicom_test_files / "CT_small.dcm"


def _ingest(svc: ArchiveService, src: Path, tmp: Path, tag: int, *, study_date: str = "20200301",
            modality: str = "CT", body_part: str = "CHEST", patient: str = "P1", n: int = 2) -> str:
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.11.{tag}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.11.{tag}.1"
    ds.StudyDate = study_date
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.PatientID = patient
    ds.PatientBirthDate = "19600101"
    for i in range(n):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.11.{tag}.1.{i + 1}"
        p = tmp / f"{tag}-{i}.dcm"
        ds.save_as(p)
        assert svc.ingest_path(p).status.value == "stored"
    return str(ds.StudyInstanceUID)


def _tiers(svc: ArchiveService, uid: str) -> tuple[str, ...]:
    d = svc.study(uid)
    assert d is not None
    return d.summary.tiers


def _all_verified(svc: ArchiveService, uid: str, tier: str) -> None:
    """Every instance has exactly one verified copy, on ``tier``, holding its bytes."""
    d = svc.study(uid)
    assert d is not None
    refs = svc.instances_to_read(uid)
    assert len(refs) == d.summary.instance_count
    for ref in refs:
        assert ref.tier == tier
        assert hashlib.sha256(svc.tier(ref.tier).get(ref.key)).hexdigest() == ref.sha256
    with svc.catalog.read() as c:
        copies = c.execute(sa.text(
            "SELECT l.tier, l.state FROM locations l JOIN instances i ON i.id = l.instance_pk "
            "JOIN studies s ON s.id = i.study_pk WHERE s.study_uid = :u"), {"u": uid}).all()
    assert sorted(copies) == [(tier, "verified")] * len(refs)


def _read_at(svc: ArchiveService, uid: str, at: datetime) -> None:
    """A read recorded at a chosen moment (as the batched access recorder writes it)."""
    with svc.catalog.write() as c:
        record_accesses(c, [AccessRow(at, uid, "wado-rs", "viewer", 1)])


def _audit(svc: ArchiveService, action: str) -> list[dict[str, object]]:
    return [{"study": e.study_uid, **e.detail} for e in svc.audit() if e.action == action]


# -- the pure part -------------------------------------------------------------------

ROLES = (TierRole("hot", cooling_days=30), TierRole("warm", retrieval_policy="on_read"),
         TierRole("cold", retrieval_policy="never"), TierRole("tape", retrieval_policy="on_read", archive=True))


def test_cooling_decision_pure() -> None:
    recv = datetime(2024, 1, 1, 23, 0, tzinfo=UTC)
    s = StudyFacts("1.2", tiers=("hot",), received_at=recv)
    assert cooling_decision(s, ROLES, date(2024, 1, 30)) is None          # 29 days
    d = cooling_decision(s, ROLES, date(2024, 1, 31))                      # 30 days
    assert d is not None and d.rule_id == "cooling:hot" and d.tier == "warm"
    read = StudyFacts("1.2", tiers=("hot",), received_at=recv, last_accessed_at=datetime(2024, 1, 20))
    assert cooling_decision(read, ROLES, date(2024, 1, 31)) is None
    # Brought onto the tier recently (a promotion): the clock starts again.
    assert cooling_decision(s, ROLES, date(2024, 1, 31), on_tier_since=datetime(2024, 1, 25)) is None
    # Several tiers (a move under way) or a tier without cooling_days: left alone.
    assert cooling_decision(StudyFacts("1.2", tiers=("hot", "warm"), received_at=recv), ROLES, date(2025, 1, 1)) is None
    assert cooling_decision(StudyFacts("1.2", tiers=("warm",), received_at=recv), ROLES, date(2025, 1, 1)) is None
    assert cooling_decision(StudyFacts("1.2", tiers=("hot",)), ROLES, date(2025, 1, 1)) is None  # nothing known


def test_promotion_check_pure() -> None:
    assert promotion_check(("warm",), ROLES, "read").promote
    assert not promotion_check(("warm",), ROLES, "prefetch").promote       # on_read does not prefetch
    assert not promotion_check(("hot",), ROLES, "read").promote
    assert not promotion_check(("cold",), ROLES, "read").promote           # never
    assert not promotion_check(("warm", "cold"), ROLES, "read").promote    # never on any tier holding it
    assert "recall" in promotion_check(("tape",), ROLES, "read").reason    # archive: a restore, not a promotion
    pf = (TierRole("hot"), TierRole("warm", retrieval_policy="prefetch_priors"))
    assert promotion_check(("warm",), pf, "prefetch").promote and promotion_check(("warm",), pf, "read").promote


def test_relevant_priors_pure() -> None:
    new = StudyFacts("new", study_date=date(2024, 6, 1), modalities=("CT", "SR"), body_parts=("CHEST",))
    others = [
        StudyFacts("a", study_date=date(2023, 6, 1), modalities=("CT",), body_parts=("CHEST",)),
        StudyFacts("b", study_date=date(2022, 6, 1), modalities=("MR",), body_parts=("chest",)),
        StudyFacts("c", study_date=date(2021, 6, 1), modalities=("CT",), body_parts=("HEAD",)),
        StudyFacts("d", study_date=date(2012, 6, 1), modalities=("CT",), body_parts=("CHEST",)),
        StudyFacts("e", study_date=date(2023, 1, 1), modalities=("MR", "SR"), body_parts=("KNEE",)),
        StudyFacts("f", study_date=None, modalities=("CT",), body_parts=("CHEST",)),
        StudyFacts("g", study_date=date(2024, 7, 1), modalities=("CT",), body_parts=("CHEST",)),  # after the new one
    ]
    uids = lambda rule: [s.study_uid for s in relevant_priors(new, others, rule, date(2024, 6, 1))]
    assert uids(PrefetchRule(count=5, match="modality")) == ["a", "c"]
    assert uids(PrefetchRule(count=5, match="body_part")) == ["a", "b"]
    assert uids(PrefetchRule(count=5, match="either")) == ["a", "b", "c"]
    assert uids(PrefetchRule(count=2, match="either")) == ["a", "b"]
    assert uids(PrefetchRule(count=5, max_age_years=15, match="modality")) == ["a", "c", "d"]


# -- cooling days in plans --------------------------------------------------------------

RULES = """
name: tiering-test
rules:
  - id: mr-to-cold
    when: {modality: MR}
    action: {transition: cold}
  - id: keep-teaching
    when: {labels: {one_of: [teaching]}}
    action: keep
"""


def _plan_kwargs() -> list[dict[str, bool]]:
    return [{}, {"pure": True}] if "pure" in inspect.signature(make_plan).parameters else [{}]


def test_cooling_days_plan_and_apply(catalog_url: str, tmp_path: Path, src: Path) -> None:
    svc = _open(tmp_path, catalog_url, hot="cooling_days = 30")
    try:
        idle = _ingest(svc, src, tmp_path, 1)
        recent = _ingest(svc, src, tmp_path, 2)
        mr = _ingest(svc, src, tmp_path, 3, modality="MR")
        teaching = _ingest(svc, src, tmp_path, 4)
        svc.label(teaching, "teaching", present=True, by="t")
        _read_at(svc, recent, NOW + timedelta(days=25))          # read 15 days before AS_OF
        policy = tmp_path / "policy.yaml"
        policy.write_text(RULES)
        source = read_policy(policy, list(svc.settings.tiers))
        for kw in _plan_kwargs():  # the database path and the pure path decide the same
            preview = make_plan(svc.catalog, svc.settings, source, as_of=AS_OF, created_by="t", store=False, **kw)
            decided = {d.study_uid: (d.action.value, d.rule_id, d.tier) for d in preview.decisions}
            assert decided == {
                idle: ("transition", "cooling:hot", "warm"),
                recent: ("keep", None, None),
                mr: ("transition", "mr-to-cold", "cold"),          # the rule decides, not cooling
                teaching: ("keep", "keep-teaching", None),         # kept by a rule: cooling does not touch it
            }, kw
            rows = {(a["action"], a["rule"], a["tier"]): a["studies"] for a in preview.plan.summary["actions"]}
            assert rows == {("transition", "cooling:hot", "warm"): 1, ("transition", "mr-to-cold", "cold"): 1}
            assert preview.plan.summary["monthly_cost_after"] < preview.plan.summary["monthly_cost_before"]
        # Before the cooling period is over, nothing cools.
        early = make_plan(svc.catalog, svc.settings, source, as_of=TODAY + timedelta(days=29), created_by="t", store=False)
        assert {d.rule_id for d in early.decisions if d.action.value == "transition"} == {"mr-to-cold"}

        plan = make_plan(svc.catalog, svc.settings, source, as_of=AS_OF, created_by="t").plan
        report = svc.apply(plan.id, approved_by="admin")
        assert report.done == 2 and not report.skipped and not report.failed
        _all_verified(svc, idle, "warm")
        _all_verified(svc, recent, "hot")
        _all_verified(svc, mr, "cold")
        _all_verified(svc, teaching, "hot")
        done = [e for e in svc.audit(plan_id=plan.id) if e.action == "action.done"]
        assert {(e.study_uid, e.rule_id) for e in done} == {(idle, "cooling:hot"), (mr, "mr-to-cold")}
    finally:
        svc.close()


def test_apply_rechecks_cooling_moves(catalog_url: str, tmp_path: Path, src: Path) -> None:
    svc = _open(tmp_path, catalog_url, hot="cooling_days = 30")
    try:
        read_since = _ingest(svc, src, tmp_path, 1)
        idle = [_ingest(svc, src, tmp_path, 2), _ingest(svc, src, tmp_path, 3)]
        plan = svc.tiering_plan(as_of=AS_OF, by="t").plan
        assert plan.summary["actions"][0]["studies"] == 3
        _read_at(svc, read_since, NOW + timedelta(days=1))   # read after the plan was made
        report = svc.apply(plan.id, approved_by="admin")
        assert dict(report.skipped)[read_since].startswith("the study changed since the plan (read")
        assert report.done == 2
        _all_verified(svc, read_since, "hot")
        for uid in idle:
            _all_verified(svc, uid, "warm")
        # Next tier: warm has no cooling_days, so a second run moves nothing more.
        again = svc.tiering_plan(as_of=AS_OF + timedelta(days=400), by="t", store=False)
        assert [a for a in again.plan.summary["actions"] if a["rule"] != "cooling:hot"] == []
    finally:
        svc.close()


def test_cooling_recheck_when_a_rule_now_decides(catalog_url: str, tmp_path: Path, src: Path) -> None:
    svc = _open(tmp_path, catalog_url, hot="cooling_days = 30")
    try:
        uid = _ingest(svc, src, tmp_path, 1)
        policy = tmp_path / "policy.yaml"
        policy.write_text(RULES)
        source = read_policy(policy, list(svc.settings.tiers))
        plan = make_plan(svc.catalog, svc.settings, source, as_of=AS_OF, created_by="t").plan
        svc.label(uid, "teaching", present=True, by="t")   # labels are not in the fingerprint
        report = svc.apply(plan.id, approved_by="admin")
        assert dict(report.skipped)[uid].startswith("policy rule keep-teaching now decides")
        _all_verified(svc, uid, "hot")
    finally:
        svc.close()


def test_tiering_run_cli(catalog_url: str, tmp_path: Path, src: Path) -> None:
    svc = _open(tmp_path, catalog_url, hot="cooling_days = 30", warm="cooling_days = 365")
    try:
        uid = _ingest(svc, src, tmp_path, 1)
    finally:
        svc.close()
    runner = CliRunner()
    home = str(tmp_path / "home")
    r = runner.invoke(app, ["tiering", "run", "--dry-run", "--as-of", AS_OF.isoformat(), "--json", "--home", home])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["plan_id"] is None
    assert out["actions"] == [{"action": "transition", "rule": "cooling:hot", "tier": "warm", "studies": 1,
                               "instances": 2, "bytes": out["actions"][0]["bytes"]}]
    r = runner.invoke(app, ["tiering", "run", "--as-of", AS_OF.isoformat(), "--json", "--home", home])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["applied"]["done"] == 1 and out["plan_id"]
    r = runner.invoke(app, ["plan", "show", out["plan_id"], "--json", "--home", home])
    shown = json.loads(r.output)
    assert shown["plan"]["policy_path"] == str(TIERING_POLICY)
    assert [(a["study_uid"], a["rule_id"], a["state"]) for a in shown["actions"]] == [(uid, "cooling:hot", "done")]
    r = runner.invoke(app, ["tiering", "show", "--home", home])
    assert r.exit_code == 0 and "30 days -> warm" in r.output and "365 days -> cold" in r.output
    svc = ArchiveService.open(load_settings(home=Path(home), env={}))
    try:
        _all_verified(svc, uid, "warm")
        # A year later on warm (counted from its arrival there), it cools again to cold.
        later = svc.tiering_plan(as_of=TODAY + timedelta(days=366), by="t", store=False)
        assert [(d.rule_id, d.tier) for d in later.decisions if d.rule_id] == [("cooling:warm", "cold")]
        sooner = svc.tiering_plan(as_of=TODAY + timedelta(days=300), by="t", store=False)
        assert [d for d in sooner.decisions if d.rule_id] == []
    finally:
        svc.close()


# -- promotion on read --------------------------------------------------------------------


def test_read_promotes_on_read_tier(catalog_url: str, tmp_path: Path, src: Path) -> None:
    svc = _open(tmp_path, catalog_url, hot="cooling_days = 30", warm='retrieval_policy = "on_read"')
    try:
        a = _ingest(svc, src, tmp_path, 1)
        b = _ingest(svc, src, tmp_path, 2)
        hot = _ingest(svc, src, tmp_path, 3)
        for uid in (a, b):
            assert move_study(svc.catalog, svc.tier, uid, "warm").ok
        svc.note_access(a, "wado-rs", "viewer")   # before the worker runs: not queued
        assert svc.promotions.pending() == 0
        svc.promotions.start(background=False)
        svc.note_access(a, "c-get", "PACS")
        svc.note_access(a, "c-move", "PACS")      # deduplicated
        svc.note_access(b, "export", "research")  # export never promotes
        svc.note_access(hot, "wado-rs", "viewer")
        assert svc.promotions.pending() == 2
        assert _tiers(svc, a) == ("warm",)        # noting a read only queues it: the read never waits for a move
        svc.promotions.drain()
        _all_verified(svc, a, "hot")
        _all_verified(svc, b, "warm")
        _all_verified(svc, hot, "hot")
        promoted = _audit(svc, "promote")
        assert [(p["study"], p["trigger"], p["interface"], p["to"], p["ok"]) for p in promoted] == [
            (a, "read", "c-get", "hot", True)]
        assert svc.promotions.stats.promoted == 1 and svc.promotions.stats.not_needed == 1
    finally:
        svc.close()


def test_a_read_under_way_survives_its_promotion(catalog_url: str, tmp_path: Path, src: Path) -> None:
    """C-GET and WADO-RS note the access when sending starts: the promotion may move the
    study while its instances are still being read from the lower tier."""
    svc = _open(tmp_path, catalog_url, warm='retrieval_policy = "on_read"')
    try:
        uid = _ingest(svc, src, tmp_path, 1, n=3)
        assert move_study(svc.catalog, svc.tier, uid, "warm").ok
        svc.promotions.start(background=False)
        refs = svc.instances_to_read(uid)            # resolved on warm
        first = svc.read(refs[0])
        svc.note_access(uid, "wado-rs", "viewer")
        svc.promotions.drain()                       # moved to hot, the warm objects deleted
        _all_verified(svc, uid, "hot")
        rest = [svc.read(r) for r in refs[1:]]       # the stale refs still read, from hot
        assert [hashlib.sha256(b).hexdigest() for b in [first, *rest]] == [r.sha256 for r in refs]
    finally:
        svc.close()


def test_read_promotion_in_the_background(catalog_url: str, tmp_path: Path, src: Path) -> None:
    svc = _open(tmp_path, catalog_url, warm='retrieval_policy = "on_read"')
    try:
        uid = _ingest(svc, src, tmp_path, 1)
        assert move_study(svc.catalog, svc.tier, uid, "warm").ok
        svc.promotions.start()
        svc.note_access(uid, "wado-rs", "viewer")
        deadline = time.monotonic() + 20
        while _tiers(svc, uid) != ("hot",) and time.monotonic() < deadline:
            time.sleep(0.05)
        _all_verified(svc, uid, "hot")
    finally:
        svc.close()


def test_never_policy_does_not_promote(catalog_url: str, tmp_path: Path, src: Path) -> None:
    svc = _open(tmp_path, catalog_url, warm='retrieval_policy = "never"', cold='retrieval_policy = "on_read"')
    try:
        uid = _ingest(svc, src, tmp_path, 1)
        assert move_study(svc.catalog, svc.tier, uid, "warm").ok
        svc.promotions.start(background=False)
        svc.note_access(uid, "wado-rs", "viewer")
        svc.promotions.drain()
        _all_verified(svc, uid, "warm")
        assert _audit(svc, "promote") == []
    finally:
        svc.close()


def test_per_minute_cap(catalog_url: str, tmp_path: Path, src: Path) -> None:
    svc = _open(tmp_path, catalog_url, warm='retrieval_policy = "on_read"', lifecycle="promotions_per_minute = 2")
    try:
        uids = [_ingest(svc, src, tmp_path, i, n=1) for i in range(1, 5)]
        for uid in uids:
            assert move_study(svc.catalog, svc.tier, uid, "warm").ok
        svc.promotions.start(background=False)
        for uid in uids:  # a scan
            svc.note_access(uid, "c-move", "SCANNER")
        svc.promotions.drain()
        assert [_tiers(svc, u) for u in uids] == [("hot",), ("hot",), ("warm",), ("warm",)]
        assert svc.promotions.stats.capped == 2
        for u in uids:
            _all_verified(svc, u, _tiers(svc, u)[0])
    finally:
        svc.close()


# -- prefetch of priors on arrival ---------------------------------------------------------------


def _years_ago(n: float) -> str:
    return (TODAY - timedelta(days=round(n * 365.25))).strftime("%Y%m%d")


@pytest.mark.parametrize("match, count, expected", [
    ("modality", 3, {"a", "c"}),
    ("body_part", 3, {"a", "b"}),
    ("either", 3, {"a", "b", "c"}),
    ("either", 2, {"a", "b"}),
])
def test_prefetch_priors_on_arrival(catalog_url: str, tmp_path: Path, src: Path, match: str, count: int,
                                    expected: set[str]) -> None:
    warm = f'retrieval_policy = "prefetch_priors"\nprefetch = {{ count = {count}, max_age_years = 10, match = "{match}" }}'
    svc = _open(tmp_path, catalog_url, warm=warm)
    try:
        priors = {
            "a": _ingest(svc, src, tmp_path, 1, study_date=_years_ago(1), modality="CT", body_part="CHEST"),
            "b": _ingest(svc, src, tmp_path, 2, study_date=_years_ago(2), modality="MR", body_part="CHEST"),
            "c": _ingest(svc, src, tmp_path, 3, study_date=_years_ago(3), modality="CT", body_part="HEAD"),
            "d": _ingest(svc, src, tmp_path, 4, study_date=_years_ago(12), modality="CT", body_part="CHEST"),
            "e": _ingest(svc, src, tmp_path, 5, study_date=_years_ago(1.5), modality="MR", body_part="KNEE"),
            "other_patient": _ingest(svc, src, tmp_path, 6, study_date=_years_ago(1), patient="P2"),
        }
        for uid in priors.values():
            assert move_study(svc.catalog, svc.tier, uid, "warm").ok
        svc.promotions.start(background=False)
        new = _ingest(svc, src, tmp_path, 10, study_date=TODAY.strftime("%Y%m%d"), modality="CT", body_part="CHEST", n=3)
        assert svc.promotions.pending() == 1          # one arrival per new study, not one per instance
        svc.promotions.drain()
        for name, uid in priors.items():
            _all_verified(svc, uid, "hot" if name in expected else "warm")
        _all_verified(svc, new, "hot")
        promoted = _audit(svc, "promote")
        assert {p["study"] for p in promoted} == {priors[n] for n in expected}
        assert all(p["trigger"] == "prefetch" and p["new_study"] == new for p in promoted)
    finally:
        svc.close()


def test_prefetch_only_from_prefetch_tiers_and_only_for_new_studies(catalog_url: str, tmp_path: Path, src: Path) -> None:
    svc = _open(tmp_path, catalog_url, hot="cooling_days = 30", warm='retrieval_policy = "on_read"',
                cold='retrieval_policy = "prefetch_priors"')
    try:
        on_warm = _ingest(svc, src, tmp_path, 1, study_date=_years_ago(1))
        on_cold = _ingest(svc, src, tmp_path, 2, study_date=_years_ago(2))
        assert move_study(svc.catalog, svc.tier, on_warm, "warm").ok
        assert move_study(svc.catalog, svc.tier, on_cold, "cold").ok
        with svc.catalog.write() as c:  # received two years ago, never read since
            c.execute(sa.update(studies).values(received_at=NOW - timedelta(days=730)))
        svc.promotions.start(background=False)
        # An old study arriving (a migration) prefetches nothing.
        _ingest(svc, src, tmp_path, 9, study_date=_years_ago(0.5))
        svc.promotions.drain()
        assert _tiers(svc, on_cold) == ("cold",)
        _ingest(svc, src, tmp_path, 10, study_date=TODAY.strftime("%Y%m%d"))
        svc.promotions.drain()
        _all_verified(svc, on_warm, "warm")    # on_read: a read promotes it, an arrival does not
        _all_verified(svc, on_cold, "hot")
        # Not read since the prefetch: its cooling clock runs from its arrival on hot, not from its receipt.
        soon = svc.tiering_plan(as_of=TODAY + timedelta(days=20), by="t", store=False)
        assert on_cold not in {d.study_uid for d in soon.decisions if d.rule_id}
        later = svc.tiering_plan(as_of=TODAY + timedelta(days=31), by="t", store=False)
        assert (on_cold, "cooling:hot", "warm") in {(d.study_uid, d.rule_id, d.tier) for d in later.decisions}
    finally:
        svc.close()
