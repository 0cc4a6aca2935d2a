"""Tricky cases, one by one, on SQLite and PostgreSQL: the SQL path decides as the pure path,
and both decide what the policy means.

29 February and month ends, the exact day a period ends, undated priors,
later mammograms, a child who is an adult now, PatientAge without a birth
date, holds, text that only looks plain, a study already on its tier, and
the cases that must fall back to the pure path (a regex on PostgreSQL,
patients sharing a key, a policy too deeply nested for SQLite's parser).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from ilm.catalog import Catalog
from ilm.catalog.policy_sql import compile_policy, threshold
from ilm.lifecycle.plan import fingerprint, make_plan, PolicySource
from ilm.policy import Action, Decision, Policy, StudyFacts
from ilm.policy.durations import Period
from ilm.service import ArchiveService

from .helpers import CT, MG, H, P, S, decide_both, load, policy, utc

SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    cat = Catalog.open(catalog_url)
    yield cat
    cat.close()


def decide(catalog: Catalog, pol: Policy, as_of: date, *, fallback: bool = False) -> dict[str, Decision]:
    """Both paths agree; return the decisions."""
    both = decide_both(catalog, pol, as_of)
    if fallback:
        assert both.fast is None, "expected the pure path"
        return both.pure
    assert both.fast is not None, "expected the SQL path"
    assert both.fast == both.pure
    return both.pure


AGE = policy("""
rules:
  - id: old
    when: {study_age: {older_than: P1Y}}
    action: expire
protections:
  minimum_retention: {enabled: false, reason: test}
  recently_accessed: {enabled: false, reason: test}
  pediatric: {enabled: false, reason: test}
""")


@pytest.mark.parametrize(("as_of", "expired"), [
    (date(2025, 2, 28), False),   # 29 Feb 2024 + 1 year = 28 Feb 2025: not yet older
    (date(2025, 3, 1), True),
])
def test_29_february_plus_a_year(catalog: Catalog, as_of: date, expired: bool) -> None:
    load(catalog, [P("P1")], [S("1.1", study_date=date(2024, 2, 29))])
    d = decide(catalog, AGE, as_of)["1.1"]
    assert (d.action is Action.EXPIRE) is expired


@pytest.mark.parametrize("days", [-1, 0, 1])
def test_the_exact_day_a_retention_ends(catalog: Catalog, days: int) -> None:
    pol = policy("""
rules:
  - id: r
    retain: {study_date_plus: P10Y}
    action: expire
protections:
  recently_accessed: {enabled: false, reason: test}
""")
    load(catalog, [P("P1")], [S("1.1", study_date=date(2011, 1, 31)), S("1.2", study_date=date(2010, 8, 31))])
    for uid, sd in (("1.1", date(2011, 1, 31)), ("1.2", date(2010, 8, 31))):
        as_of = Period(years=10).add_to(sd) + timedelta(days=days)
        d = decide(catalog, pol, as_of)[uid]
        assert (d.action is Action.EXPIRE) is (days > 0), (uid, as_of, d)


TEXAS_LIKE = policy("""
rules:
  - id: records
    when: {mammography: false}
    retain: {max: [{last_encounter_plus: P10Y}, {birth_plus: P20Y}]}
    action: expire
""")


def test_an_undated_prior_leaves_the_last_encounter_unknown(catalog: Catalog) -> None:
    load(catalog, [P("P1"), P("P2")], [
        S("1.1", 0, study_date=date(2005, 3, 1)),
        S("1.2", 0, study_date=None, study_date_raw=""),          # an undated prior: could be the last encounter
        S("2.1", 1, study_date=date(2005, 3, 1)),
        S("2.2", 1, study_date=date(2006, 3, 1), state="quarantined"),  # still an encounter
        S("2.3", 1, study_date=date(2024, 3, 1), state="purging"),      # no longer one
    ])
    ds = decide(catalog, TEXAS_LIKE, date(2025, 6, 1))
    assert ds["1.1"].action is Action.KEEP and [v.protection for v in ds["1.1"].vetoes] == ["unknown_facts"]
    assert ds["2.1"].action is Action.EXPIRE  # last encounter 2006 + 10 years is over


MAMMO = policy("""
rules:
  - id: mg
    when: {mammography: true}
    retain: {mqsa: {years: 5, without_later_mammogram_years: 10}}
    action: expire
protections:
  recently_accessed: {enabled: false, reason: test}
""")


@pytest.mark.parametrize(("later", "as_of", "expired"), [
    (True, date(2021, 3, 2), True),     # 2016 + 5 years, a later mammogram exists
    (False, date(2021, 3, 2), False),   # no later one: 10 years
    (False, date(2026, 3, 2), True),
])
def test_a_later_mammogram_shortens_mqsa(catalog: Catalog, later: bool, as_of: date, expired: bool) -> None:
    rows = [S("1.1", study_date=date(2016, 3, 1), modalities="MG", sop_classes=MG, body_parts="BREAST")]
    if later:  # a tomosynthesis stored as Secondary Capture of the breast, a year later
        rows.append(S("1.2", study_date=date(2017, 3, 1), modalities="OT", sop_classes=SC, body_parts="BREAST",
                      state="quarantined"))
    load(catalog, [P("P1")], rows)
    d = decide(catalog, MAMMO, as_of)["1.1"]
    assert (d.action is Action.EXPIRE) is expired, d


CHILD = policy("""
rules:
  - id: all
    action: expire
protections:
  minimum_retention: {enabled: false, reason: test}
  recently_accessed: {enabled: false, reason: test}
""")


@pytest.mark.parametrize(("study_day", "as_of", "vetoed"), [
    (date(2010, 5, 1), date(2028, 2, 29), True),    # a child then; kept until the 28th birthday, 29 Feb 2028
    (date(2010, 5, 1), date(2028, 3, 1), False),    # an adult now and the window is over
    (date(2018, 2, 27), date(2025, 1, 1), True),    # the day before the 18th birthday (28 Feb 2018)
    (date(2018, 2, 28), date(2025, 1, 1), False),   # on the 18th birthday: an adult
])
def test_a_child_who_is_an_adult_now(catalog: Catalog, study_day: date, as_of: date, vetoed: bool) -> None:
    load(catalog, [P("P1", birth_date=date(2000, 2, 29))], [S("1.1", study_date=study_day)])
    d = decide(catalog, CHILD, as_of)["1.1"]
    assert ("pediatric" in [v.protection for v in d.vetoes]) is vetoed, d


def test_patient_age_without_birth_date_goes_to_the_pure_code(catalog: Catalog) -> None:
    load(catalog, [P("P1", birth_date=None, birth_date_raw="19XX0101")],
         [S("1.1", study_date=date(2010, 5, 1), patient_age="008Y"), S("1.2", study_date=date(2010, 5, 1))])
    ds = decide(catalog, CHILD, date(2015, 1, 1))
    assert [v.protection for v in ds["1.1"].vetoes] == ["pediatric"]
    assert [v.protection for v in ds["1.2"].vetoes] == ["unknown_facts"]


def test_holds_veto_and_released_ones_do_not(catalog: Catalog) -> None:
    pats = [P("P1"), P("P2", issuer="H"), P("P3")]
    rows = [S("1.1", 0), S("1.2", 0), S("2.1", 1), S("3.1", 2)]
    load(catalog, pats, rows, [H("study", "1.1"), H("patient", "H:P2"), H("patient", "P3", released=True)])
    ds = decide(catalog, CHILD, date(2030, 1, 1))
    assert [v.protection for v in ds["1.1"].vetoes] == ["legal_hold"]
    assert ds["1.2"].action is Action.EXPIRE
    assert [v.protection for v in ds["2.1"].vetoes] == ["legal_hold"]
    assert ds["3.1"].action is Action.EXPIRE


@pytest.mark.parametrize(("modalities", "sops", "parts", "mammography"), [
    ("MG", MG, "BREAST", True),
    (" MG", CT, "", True),           # blanks around a value
    ("CT\\mg", CT, "", True),
    ("ＭＧ", CT, "", False),          # full-width letters are not MG
    ("OT", SC, "BREAſT", True),      # long s: Python upper-cases it to S
    ("OT", SC, "breast", True),
    ("OT", CT, "BREAST", False),
    ("CT", f"{CT}\\ {MG}", "", True),
])
def test_mammography_in_text_that_only_looks_plain(catalog: Catalog, modalities: str, sops: str, parts: str,
                                                     mammography: bool) -> None:
    pol = policy("rules:\n  - {id: mg, when: {mammography: true}, action: {transition: warm}}\n")
    load(catalog, [P("P1")], [S("1.1", modalities=modalities, sop_classes=sops, body_parts=parts)])
    d = decide(catalog, pol, date(2025, 1, 1))["1.1"]
    assert (d.rule_id == "mg") is mammography


@pytest.mark.parametrize(("tiers", "action", "reason"), [
    ("warm", Action.KEEP, "already on warm"),
    ("warm\\warm", Action.KEEP, "already on warm"),
    ("hot\\warm", Action.TRANSITION, "move to warm"),
    ("hot", Action.TRANSITION, "move to warm"),
    ("", Action.TRANSITION, "move to warm"),
    (" warm", Action.KEEP, "already on warm"),
    ("WARM", Action.TRANSITION, "move to warm"),
])
def test_a_study_already_on_its_tier(catalog: Catalog, tiers: str, action: Action, reason: str) -> None:
    pol = policy("rules:\n  - {id: t, when: {modality: CT}, action: {transition: warm}}\n")
    load(catalog, [P("P1")], [S("1.1", tiers=tiers)])
    d = decide(catalog, pol, date(2025, 1, 1))["1.1"]
    assert (d.action, d.reason) == (action, reason)


def test_reads_near_midnight_in_other_time_zones(catalog: Catalog) -> None:
    pol = policy("rules:\n  - {id: cold, when: {since_last_access: {older_than: P30D}}, action: {transition: warm}}\n")
    plus2 = timezone(timedelta(hours=2))
    load(catalog, [P("P1")], [
        S("1.1", received_at=utc(date(2010, 1, 1)), last_accessed_at=datetime(2025, 1, 1, 0, 30, tzinfo=plus2)),
        S("1.2", received_at=utc(date(2010, 1, 1)), last_accessed_at=datetime(2024, 12, 31, 23, 59, tzinfo=timezone.utc)),
        S("1.3", received_at=utc(date(2010, 1, 1))),
    ])
    decide(catalog, pol, date(2025, 1, 31))  # agreement is the point: SQLite keeps wall clocks, PostgreSQL UTC


def test_a_regex_runs_in_sqlite_and_falls_back_on_postgresql(catalog: Catalog) -> None:
    pol = policy("rules:\n  - {id: rt, when: {modality: {regex: 'RT.*'}}, action: {transition: warm}}\n")
    load(catalog, [P("P1")], [S("1.1", modalities="RTPLAN"), S("1.2", modalities="CT\\RTSTRUCT"), S("1.3")])
    pg = catalog.engine.dialect.name == "postgresql"
    ds = decide(catalog, pol, date(2025, 1, 1), fallback=pg)
    assert [uid for uid, d in sorted(ds.items()) if d.rule_id] == ["1.1", "1.2"]


def test_patients_sharing_a_key_fall_back(catalog: Catalog) -> None:
    # "H:P1" with no issuer and "P1" from issuer H are one patient key: the pure path merges them.
    load(catalog, [P("H:P1"), P("P1", issuer="H")], [S("1.1", 0), S("2.1", 1, study_date=None, study_date_raw="")])
    ds = decide(catalog, TEXAS_LIKE, date(2030, 1, 1), fallback=True)
    assert [v.protection for v in ds["1.1"].vetoes] == ["unknown_facts"]


def test_a_colon_alone_does_not_fall_back(catalog: Catalog) -> None:
    load(catalog, [P("MRN:1"), P("P2", issuer="H")], [S("1.1", 0), S("2.1", 1)])
    decide(catalog, TEXAS_LIKE, date(2030, 1, 1))


def test_a_policy_too_nested_for_sqlite_falls_back(catalog: Catalog) -> None:
    inner = "{study_age: {older_than: P1Y}}"
    for _ in range(12):
        inner = f"{{any: [{inner}, {{modality: CT, not: {{labels: x}}}}]}}"
    pol = policy(f"rules:\n  - id: deep\n    when: {inner}\n    action: expire\n")
    load(catalog, [P("P1")], [S("1.1"), S("1.2", modalities="MR")])
    both = decide_both(catalog, pol, date(2025, 1, 1))
    if both.fast is not None:
        assert both.fast == both.pure


def test_thresholds_against_every_day() -> None:
    """threshold(P, as_of) is the first day d with P.add_to(d) >= as_of."""
    for p in (Period(years=1), Period(months=1), Period(years=18), Period(days=30), Period(years=1, months=1, days=1),
              Period(), Period(years=9000)):
        for as_of in (date(2024, 2, 29), date(2025, 3, 1), date(2025, 3, 31), date(1, 1, 5)):
            t = threshold(p, as_of)
            assert p.add_to(t) >= as_of
            if t > date.min:
                assert p.add_to(t - timedelta(days=1)) < as_of


def test_month_shift_formula_against_python(catalog: Catalog) -> None:
    """The (year * 12 + month, day) comparison of two date columns equals Period.add_to, month ends included."""
    from ilm.catalog.policy_sql import _Sql

    q = _Sql(catalog.engine.dialect.name)
    births = [date(2000, 2, 29), date(2001, 1, 31), date(1999, 12, 31), date(2004, 3, 1), date(2003, 8, 30)]
    pairs = [(b, Period(months=m).add_to(b) + timedelta(days=k)) for b in births for m in (1, 12, 13, 216)
             for k in (-1, 0, 1)]
    with catalog.read() as c:
        for b, d in pairs:
            for months in (1, 12, 13, 216):
                shifted = Period(months=months).add_to(b)
                gt, ge = c.execute(sa.select(q.after_shift(sa.literal(d, sa.Date), sa.literal(b, sa.Date), months),
                                             q.after_shift(sa.literal(d, sa.Date), sa.literal(b, sa.Date), months,
                                                           or_equal=True))).one()
                assert (bool(gt), bool(ge)) == (d > shifted, d >= shifted), (b, d, months)


@pytest.mark.parametrize("read", [
    None,
    datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
    datetime(2024, 5, 6, 0, 0, 0, tzinfo=timezone.utc),          # no microseconds: Python would drop them
    datetime(2024, 5, 6, 1, 30, tzinfo=timezone(timedelta(hours=2))),
])
def test_the_database_writes_the_fingerprint_apply_checks(service: ArchiveService, read: datetime | None) -> None:
    from ilm.catalog.facts import load_policy_inputs
    from ilm.catalog.plans import plan_action_rows

    load(service.catalog, [P("P1")], [S("1.1", instance_count=7, size_bytes=12_345_678_901, last_accessed_at=read)])
    pol = policy("rules:\n  - {id: t, action: {transition: warm}}\n")
    plan = make_plan(service.catalog, service.settings, PolicySource("p", "t", "0" * 64, pol),
                     as_of=date(2025, 1, 1), created_by="t").plan
    with service.catalog.read() as c:
        stored = next(iter(plan_action_rows(c, plan.id))).fingerprint
        facts = load_policy_inputs(c, ["1.1"]).studies[0]
    assert stored == fingerprint(facts)


def test_the_catalog_hash_follows_what_changes_a_plan(service: ArchiveService) -> None:
    pol = PolicySource("p", "t", "0" * 64, CHILD)
    load(service.catalog, [P("P1")], [S("1.1"), S("1.2")])

    def catalog_hash() -> str:
        return make_plan(service.catalog, service.settings, pol, as_of=date(2030, 1, 1), created_by="t",
                         store=False).plan.catalog_sha256

    first = catalog_hash()
    assert catalog_hash() == first
    with service.catalog.write() as c:
        c.execute(sa.text("UPDATE studies SET last_accessed_at = updated_at WHERE study_uid = '1.2'"))
    read = catalog_hash()
    assert read != first
    load(service.catalog, [P("P1")], [S("1.1"), S("1.2")], [H("study", "1.1")])
    assert catalog_hash() not in (first, read)


def test_plan_decisions_are_read_back_from_the_stored_plan(service: ArchiveService) -> None:
    pol = policy("""
rules:
  - {id: keep-teaching, when: {labels: teaching}, action: keep}
  - {id: ct, when: {modality: CT}, action: {transition: warm}}
  - {id: mr, when: {modality: MR}, action: expire}
""")
    load(service.catalog, [P("P1"), P("P2", birth_date=None)], [
        S("1.1", tiers="hot"), S("1.2", tiers="warm"), S("1.3", labels="teaching"), S("1.4", modalities="US"),
        S("1.5", modalities="MR"), S("2.1", 1, modalities="MR", study_date=date(2027, 1, 1)),
    ])
    source = PolicySource("p", "t", "0" * 64, pol)
    fast = make_plan(service.catalog, service.settings, source, as_of=date(2030, 1, 1), created_by="t")
    pure = make_plan(service.catalog, service.settings, source, as_of=date(2030, 1, 1), created_by="t", pure=True)
    assert len(fast.decisions) == len(pure.decisions) == 6
    assert {d.study_uid: d for d in fast.decisions} == {d.study_uid: d for d in pure.decisions}
    got = {d.study_uid: (d.action.value, d.rule_id, d.reason) for d in fast.decisions}
    assert got == {
        "1.1": ("transition", "ct", "move to warm"), "1.2": ("keep", "ct", "already on warm"),
        "1.3": ("keep", "keep-teaching", "kept by rule keep-teaching"), "1.4": ("keep", None, "no rule matched"),
        "1.5": ("expire", "mr", "expire"), "2.1": ("keep", "mr", "expiry vetoed by minimum_retention, unknown_facts"),
    }
    assert fast.decisions[0].study_uid == "1.1"  # indexable too


def test_rule_outcomes_and_facts_read_from_plain_values() -> None:
    """The decisions the SQL states itself are worded exactly as evaluate() words them."""
    from ilm.catalog.policy_sql import decision_of_code, ALREADY
    from ilm.policy import evaluate

    pol = policy("""
rules:
  - {id: k, when: {labels: keep}, action: keep}
  - {id: t, when: {modality: CT}, action: {transition: warm}}
  - {id: e, action: expire}
protections:
  minimum_retention: {enabled: false, reason: test}
  recently_accessed: {enabled: false, reason: test}
  pediatric: {enabled: false, reason: test}
  mammography: {enabled: false, reason: test}
""")
    base = dict(study_uid="u", patient_key="P", study_date=date(2000, 1, 1), birth_date=date(1950, 1, 1),
                received_at=utc(date(2000, 1, 1)))
    cases = [
        (StudyFacts(**base, labels=("keep",)), 1),
        (StudyFacts(**base, modalities=("CT",), tiers=("hot",)), 2),
        (StudyFacts(**base, modalities=("CT",), tiers=("warm",)), ALREADY + 2),
        (StudyFacts(**base, modalities=("MR",)), 3),
    ]
    for facts, code in cases:
        assert decision_of_code(pol, code, "u") == evaluate(pol, facts, None, date(2025, 1, 1))


def test_compiles_for_both_dialects() -> None:
    for dialect in ("sqlite", "postgresql"):
        compile_policy(TEXAS_LIKE, date(2025, 1, 1), dialect)
