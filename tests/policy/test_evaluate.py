"""Table-driven evaluation: every condition, rule shape, protection and conflict,
on a fixed date. Each case has a comment saying what it shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pytest

from ilm.policy import CONFLICT_RULE, Action, Decision, Hold, HoldScope, Outcome, evaluate, evaluate_all
from ilm.policy.facts import StudyFacts

from .helpers import BREAST_TOMO, CT_IMAGE, MG_PRESENTATION, NOW, SECONDARY_CAPTURE, at, patient_of, policy, study


def warm_if(when: str) -> str:
    return f"rules:\n  - id: r\n    when: {when}\n    action: {{transition: warm}}\n"


def expire_if(when: str, protections: str = "") -> str:
    return f"{protections}rules:\n  - id: r\n    when: {when}\n    action: expire\n"


def expire_all(protections: str = "") -> str:
    return f"{protections}rules:\n  - id: r\n    action: expire\n"


def retain(term: str, when: str = "") -> str:
    w = f"    when: {when}\n" if when else ""
    return f"rules:\n  - id: r\n{w}    retain: {term}\n    action: expire\n"


MG = dict(modalities=("MG",), sop_classes=(MG_PRESENTATION,), body_parts=("BREAST",))
NO_BIRTH = dict(birth_date=None, birth_date_raw="", patient_age_raw="")


@dataclass
class Case:
    policy: str
    study: dict[str, Any] = field(default_factory=dict)
    action: Action = Action.KEEP
    rule: str | None = None
    vetoes: frozenset[str] = frozenset()
    unknown: tuple[str, ...] = ()
    others: tuple[dict[str, Any], ...] = ()  # the patient's other studies
    patient_holds: tuple[Hold, ...] = ()
    as_of: date = NOW
    reason: str = ""  # a fragment the decision's reason or vetoes must contain


V = frozenset
CASES: dict[str, Case] = {
    # ---- attribute conditions (match -> moved to warm, miss -> no rule) ----
    # equals matches any value of a multi-valued attribute (CT\SR)
    "attr-equals": Case(warm_if("{modality: CT}"), action=Action.TRANSITION, rule="r"),
    # a value the study does not have: no rule matches, the study stays
    "attr-equals-miss": Case(warm_if("{modality: MR}")),
    # a list means one_of
    "attr-one-of": Case(warm_if("{modality: [MR, CT]}"), action=Action.TRANSITION, rule="r"),
    # regex must match the whole value
    "attr-regex-whole-value": Case(warm_if('{description: {regex: "CT CHEST.*"}}'), action=Action.TRANSITION, rule="r"),
    # ... so a fragment does not match
    "attr-regex-fragment-misses": Case(warm_if('{description: {regex: "CHEST"}}')),
    # (?i) makes a regex ignore case
    "attr-regex-ignorecase": Case(warm_if('{institution: {regex: "(?i).*general.*"}}'), action=Action.TRANSITION, rule="r"),
    # equals ignores case and spaces
    "attr-equals-ignores-case": Case(warm_if("{body_part: ' chest '}"), action=Action.TRANSITION, rule="r"),
    # not: no value of the attribute matches; the study has an SR series
    "attr-not": Case(warm_if("{modality: {not: SR}}")),
    "attr-not-absent-value": Case(warm_if("{modality: {not: {one_of: [MG, US]}}}"), action=Action.TRANSITION, rule="r"),
    # empty: an attribute without a value
    "attr-empty": Case(warm_if("{accession: {empty: true}}"), {"accession": ""}, Action.TRANSITION, "r"),
    # DICOM keywords are accepted for attribute names
    "attr-dicom-keyword": Case(warm_if("{StationName: CT01}"), action=Action.TRANSITION, rule="r"),
    "attr-sop-class": Case(warm_if(f"{{sop_class: '{CT_IMAGE}'}}"), action=Action.TRANSITION, rule="r"),
    "attr-sex-miss": Case(warm_if("{PatientSex: M}")),
    "attr-labels": Case(warm_if("{labels: research}"), {"labels": ("research",)}, Action.TRANSITION, "r"),
    "attr-current-tier": Case(warm_if("{current_tier: hot}"), action=Action.TRANSITION, rule="r"),
    "attr-current-tier-miss": Case(warm_if("{current_tier: hot}"), {"tiers": ("warm",)}),
    # ---- time conditions ----
    # the default study is of 2010-03-01, NOW is 2025-06-15
    "study-age-older": Case(warm_if("{study_age: {older_than: P10Y}}"), action=Action.TRANSITION, rule="r"),
    "study-age-younger-miss": Case(warm_if("{study_age: {younger_than: 10y}}")),
    # exactly two years old is not yet older than two years ...
    "study-age-boundary-exact": Case(warm_if("{study_age: {older_than: P2Y}}"), {"study_date": date(2023, 6, 15)}),
    # ... one more day and it is
    "study-age-boundary-next-day": Case(warm_if("{study_age: {older_than: P2Y}}"), {"study_date": date(2023, 6, 14)},
                                        Action.TRANSITION, "r"),
    # read in January: more than 90 days ago
    "since-last-access-old": Case(warm_if("{since_last_access: {older_than: P90D}}"),
                                  {"last_accessed_at": at(date(2025, 1, 1))}, Action.TRANSITION, "r"),
    # read two weeks ago
    "since-last-access-recent": Case(warm_if("{since_last_access: {older_than: P90D}}"),
                                     {"last_accessed_at": at(date(2025, 6, 1))}),
    # never read: counts from when it was received (2010)
    "since-last-access-never-read": Case(warm_if("{since_last_access: {older_than: P90D}}"), action=Action.TRANSITION, rule="r"),
    "since-received": Case(warm_if("{since_received: {younger_than: P30D}}"), {"received_at": at(date(2025, 6, 10))},
                           Action.TRANSITION, "r"),
    # five years old at the study, from the birth date
    "age-at-study-child": Case(warm_if("{patient_age_at_study: {younger_than: P18Y}}"), {"birth_date": date(2005, 1, 1)},
                               Action.TRANSITION, "r"),
    "age-at-study-adult": Case(warm_if("{patient_age_at_study: {younger_than: P18Y}}")),
    # no birth date: PatientAge 010Y at the study is enough to tell
    "age-at-study-from-patientage": Case(warm_if("{patient_age_at_study: {younger_than: P18Y}}"),
                                         {**NO_BIRTH, "patient_age_raw": "010Y"}, Action.TRANSITION, "r"),
    # 017Y cannot tell younger or older than 17.5: undetermined, the study stays and says why
    "age-at-study-too-coarse": Case(warm_if("{patient_age_at_study: {younger_than: P17Y6M}}"),
                                    {**NO_BIRTH, "patient_age_raw": "017Y"}, rule="r", unknown=("PatientBirthDate",)),
    # born 1960-05-05: 65 since 2025-05-05
    "age-now": Case(warm_if("{patient_age_now: {older_than: P65Y}}"), action=Action.TRANSITION, rule="r"),
    "study-date-before": Case(warm_if("{study_date: {before: 2012-01-01}}"), action=Action.TRANSITION, rule="r"),
    # ---- size, count, flags ----
    "size-at-least": Case(warm_if("{study_size: {at_least: 100MB}}"), action=Action.TRANSITION, rule="r"),
    "size-at-most-miss": Case(warm_if("{study_size: {at_most: 150MB}}")),
    "instance-count-miss": Case(warm_if("{instance_count: {at_least: 500}}")),
    "mammography-flag-miss": Case(warm_if("{mammography: true}")),
    # ---- composition ----
    # not(CT and older than 20y): the inner group misses, so not matches
    "not-group": Case(warm_if("{not: {modality: CT, study_age: {older_than: P20Y}}}"), action=Action.TRANSITION, rule="r"),
    "any-group": Case(warm_if("{any: [{modality: MR}, {labels: research}]}"), {"labels": ("research",)},
                      Action.TRANSITION, "r"),
    "any-group-miss": Case(warm_if("{any: [{modality: MR}, {labels: research}]}")),
    # negating an unknown stays unknown: no date never becomes "not old"
    "not-of-unknown": Case(warm_if("{not: {study_age: {older_than: P1Y}}}"), {"study_date": None}, rule="r",
                           unknown=("StudyDate",)),
    # ---- rule shapes ----
    # a study already on the target tier stays: the rule decided, nothing to do
    "transition-already-there": Case(warm_if("{modality: CT}"), {"tiers": ("warm",)}, rule="r", reason="already on warm"),
    "expire-plain": Case(expire_all(), action=Action.EXPIRE, rule="r"),
    # keep stops the reading: exceptions go first
    "keep-action": Case("rules:\n  - {id: k, when: {labels: teaching}, action: keep}\n  - {id: e, action: expire}\n",
                        {"labels": ("teaching",)}, rule="k"),
    # last encounter + 10y: a later study (2020) of the patient keeps this one until 2030
    "retain-last-encounter-later-study": Case(retain("{last_encounter_plus: P10Y}"),
                                              others=({"study_uid": "9.9", "study_date": date(2020, 1, 1)},)),
    # no later study: 2010 + 10y is over
    "retain-last-encounter-over": Case(retain("{last_encounter_plus: P10Y}"), action=Action.EXPIRE, rule="r"),
    # the 70th birthday is in 2030
    "retain-birth-plus": Case(retain("{until: {birth_plus: P70Y}}")),
    "retain-max-retained": Case(retain("{max: [{study_date_plus: P5Y}, {birth_plus: P70Y}]}")),
    "retain-max-over": Case(retain("{max: [{study_date_plus: P5Y}, {last_encounter_plus: P10Y}]}"), action=Action.EXPIRE, rule="r"),
    # birth unknown, but StudyDate + 20y already keeps it: known enough, falls through
    "retain-max-unknown-but-retained": Case(retain("{max: [{birth_plus: P20Y}, {study_date_plus: P20Y}]}"), NO_BIRTH),
    # birth unknown and the known term is over: undetermined, expiry vetoed naming the fact
    "retain-max-unknown": Case(retain("{max: [{birth_plus: P20Y}, {study_date_plus: P5Y}]}"), NO_BIRTH, rule="r",
                               vetoes=V({"unknown_facts"}), unknown=("PatientBirthDate",), reason="PatientBirthDate"),
    # MQSA clause, later mammogram: 5 years (2018 -> 2023) are over
    "mqsa-later-mammogram": Case(retain("{mqsa: {years: 5, without_later_mammogram_years: 10}}", "{mammography: true}"),
                                 {**MG, "study_date": date(2018, 1, 10)}, Action.EXPIRE, "r",
                                 others=({**MG, "study_uid": "9.9", "study_date": date(2019, 1, 10)},)),
    # MQSA clause, no later mammogram: 10 years, retained until 2028
    "mqsa-no-later-mammogram": Case(retain("{mqsa: {}}", "{mammography: true}"), {**MG, "study_date": date(2018, 1, 10)}),
    # a later non-mammography study is not a later mammogram
    "mqsa-later-study-not-mammogram": Case(retain("{mqsa: {}}", "{mammography: true}"), {**MG, "study_date": date(2018, 1, 10)},
                                           others=({"study_uid": "9.9", "study_date": date(2019, 1, 10)},)),
    # ---- protections (the rule always says expire) ----
    "hold-on-study": Case(expire_all(), {"holds": (Hold(HoldScope.STUDY, "litigation 2024-17"),)}, rule="r",
                          vetoes=V({"legal_hold"}), reason="litigation 2024-17"),
    "hold-on-patient": Case(expire_all(), patient_holds=(Hold(HoldScope.PATIENT, "subpoena"),), rule="r",
                            vetoes=V({"legal_hold"}), reason="patient hold: subpoena"),
    # mammogram of 2017, no later one: kept until 2027
    "mammo-no-later-within-10y": Case(expire_all(), {**MG, "study_date": date(2017, 1, 1)}, rule="r",
                                      vetoes=V({"mammography"}), reason="2027-01-01"),
    # a later mammogram (2018) shortens it to 5 years: 2022 is past
    "mammo-later-mammogram-5y": Case(expire_all(), {**MG, "study_date": date(2017, 1, 1)}, Action.EXPIRE, "r",
                                     others=({**MG, "study_uid": "9.9", "study_date": date(2018, 1, 1)},)),
    "mammo-beyond-10y": Case(expire_all(), {**MG, "study_date": date(2014, 1, 1)}, Action.EXPIRE, "r"),
    # tomosynthesis SOP class without MG modality is still mammography
    "mammo-tomosynthesis-sop-class": Case(expire_all(), {"modalities": ("OT",), "sop_classes": (BREAST_TOMO,),
                                                         "study_date": date(2017, 1, 1)}, rule="r", vetoes=V({"mammography"})),
    # vendors storing tomosynthesis as Secondary Capture of the breast
    "mammo-secondary-capture-breast": Case(expire_all(), {"modalities": ("OT",), "sop_classes": (SECONDARY_CAPTURE,),
                                                          "body_parts": ("BREAST",), "study_date": date(2017, 1, 1)},
                                           rule="r", vetoes=V({"mammography"})),
    # Secondary Capture of the chest is not
    "secondary-capture-chest": Case(expire_all(), {"modalities": ("OT",), "sop_classes": (SECONDARY_CAPTURE,),
                                                   "study_date": date(2017, 1, 1)}, Action.EXPIRE, "r"),
    # seven at the study (2012), kept until the 28th birthday (2033)
    "pediatric-child": Case(expire_all(), {"birth_date": date(2005, 1, 1), "study_date": date(2012, 1, 1)}, rule="r",
                            vetoes=V({"pediatric"}), reason="2033-01-01"),
    # a child who became an adult: ten at the study (2000), 28 in 2018
    "pediatric-child-became-adult": Case(expire_all(), {"birth_date": date(1990, 1, 1), "study_date": date(2000, 1, 1)},
                                         Action.EXPIRE, "r"),
    # the same young patient's adult study (19) is not pediatric
    "pediatric-adult-study": Case(expire_all(), {"birth_date": date(2000, 1, 1), "study_date": date(2019, 6, 1)},
                                  Action.EXPIRE, "r"),
    # no birth date; PatientAge 008Y at the study says child
    "pediatric-from-patientage": Case(expire_all(), {**NO_BIRTH, "patient_age_raw": "008Y", "study_date": date(2012, 1, 1)},
                                      rule="r", vetoes=V({"pediatric"})),
    "minimum-retention": Case(expire_all(), {"study_date": date(2022, 1, 1)}, rule="r", vetoes=V({"minimum_retention"})),
    "recently-accessed": Case(expire_all(), {"last_accessed_at": at(date(2025, 6, 5))}, rule="r",
                              vetoes=V({"recently_accessed"})),
    # missing facts keep the study and name the fact
    "unknown-study-date": Case(expire_all(), {"study_date": None}, rule="r", vetoes=V({"unknown_facts"}),
                               unknown=("StudyDate",), reason="StudyDate is missing"),
    "unparsable-study-date": Case(expire_all(), {"study_date": None, "study_date_raw": "2010-13-45"}, rule="r",
                                  vetoes=V({"unknown_facts"}), reason="'2010-13-45'"),
    "missing-birth-and-age": Case(expire_all(), NO_BIRTH, rule="r", vetoes=V({"unknown_facts"}), reason="PatientAge is empty"),
    "odd-patientage": Case(expire_all(), {**NO_BIRTH, "patient_age_raw": "45"}, rule="r", vetoes=V({"unknown_facts"}),
                           unknown=("PatientAge",), reason="PatientAge '45'"),
    # one study can be covered by several protections: all are named
    "several-vetoes": Case(expire_all(), {**MG, "study_date": date(2022, 1, 1), "holds": (Hold(HoldScope.STUDY, "x"),)},
                           rule="r", vetoes=V({"legal_hold", "mammography", "minimum_retention"})),
    # a protection turned off (with a reason) no longer vetoes
    "protection-off": Case(expire_all("protections: {pediatric: {enabled: false, reason: research archive}}\n"),
                           {"birth_date": date(2005, 1, 1), "study_date": date(2012, 1, 1)}, Action.EXPIRE, "r"),
    # protections never veto a transition, even of a held, recent mammogram of a child
    "protections-never-veto-transitions": Case(warm_if("{modality: MG}"), {**MG, "study_date": date(2024, 1, 1),
                                               "birth_date": date(2012, 1, 1), "holds": (Hold(HoldScope.STUDY, "x"),)},
                                               Action.TRANSITION, "r"),
    # unknown_facts off: the other nets still fail closed under their own names
    "unknown-facts-off-nets-fail-closed": Case(expire_all("protections: {unknown_facts: {enabled: false, reason: test}}\n"),
                                               {"study_date": None}, rule="r", vetoes=V({"minimum_retention"}),
                                               reason="cannot tell"),
    # unknown_facts off: a rule that cannot be decided is acted on
    "unknown-facts-off-rule-acts": Case(
        expire_if("{study_age: {older_than: P10Y}}",
                  "protections: {unknown_facts: {enabled: false, reason: t}, minimum_retention: {enabled: false, reason: t}}\n"),
        {"study_date": None}, Action.EXPIRE, "r", unknown=("StudyDate",)),
    "minimum-retention-configured": Case(expire_all("protections: {minimum_retention: {period: P20Y}}\n"), rule="r",
                                         vetoes=V({"minimum_retention"})),
    "recently-accessed-configured": Case(expire_all("protections: {recently_accessed: {within: P7D}}\n"),
                                         {"last_accessed_at": at(date(2025, 6, 5))}, Action.EXPIRE, "r"),
    # ---- conflicts: the first matching rule decides ----
    "first-match-transition-wins": Case(
        "rules:\n  - {id: warm, when: {modality: CT}, action: {transition: warm}}\n"
        "  - {id: old, when: {study_age: {older_than: P10Y}}, action: expire}\n", action=Action.TRANSITION, rule="warm"),
    "first-match-expire-wins": Case(
        "rules:\n  - {id: old, when: {study_age: {older_than: P10Y}}, action: expire}\n"
        "  - {id: warm, when: {modality: CT}, action: {transition: warm}}\n", action=Action.EXPIRE, rule="old"),
    # a vetoed expiry keeps the study; it does not fall through to the next rule
    "vetoed-expiry-does-not-fall-through": Case(
        "rules:\n  - {id: old, when: {study_age: {older_than: P1Y}}, action: expire}\n"
        "  - {id: warm, when: {modality: CT}, action: {transition: warm}}\n", {"study_date": date(2022, 1, 1)},
        rule="old", vetoes=V({"minimum_retention"})),
    # a rule that cannot be decided stops the reading: the later expiry is not reached
    "undetermined-rule-stops-reading": Case(
        "rules:\n  - {id: warm, when: {study_age: {older_than: P2Y}}, action: {transition: warm}}\n"
        "  - {id: ct, when: {modality: CT}, action: expire}\n", {"study_date": None}, rule="warm", unknown=("StudyDate",),
        reason="not moved to warm"),
    # a retention not yet over falls through to tiering
    "retained-falls-through-to-tiering": Case(
        "rules:\n  - {id: ret, retain: {last_encounter_plus: P20Y}, action: expire}\n"
        "  - {id: warm, when: {modality: CT}, action: {transition: warm}}\n", action=Action.TRANSITION, rule="warm"),
    # ---- 29 February ----
    # 2016-02-29 + 1 year = 2017-02-28: not yet older than a year that day
    "feb29-study-age-last-day": Case(warm_if("{study_age: {older_than: P1Y}}"), {"study_date": date(2016, 2, 29)},
                                     as_of=date(2017, 2, 28)),
    "feb29-study-age-next-day": Case(warm_if("{study_age: {older_than: P1Y}}"), {"study_date": date(2016, 2, 29)},
                                     Action.TRANSITION, "r", as_of=date(2017, 3, 1)),
    # born 2008-02-29, majority 18 + 1: protected through 2027-02-28 ...
    "feb29-child-window-last-day": Case(expire_all("protections: {pediatric: {years_after_majority: 1}}\n"),
                                        {"birth_date": date(2008, 2, 29)}, rule="r", vetoes=V({"pediatric"}),
                                        as_of=date(2027, 2, 28)),
    # ... and released on 2027-03-01
    "feb29-child-window-over": Case(expire_all("protections: {pediatric: {years_after_majority: 1}}\n"),
                                    {"birth_date": date(2008, 2, 29)}, Action.EXPIRE, "r", as_of=date(2027, 3, 1)),
    # retention from a Feb-29 study date ends on Feb 28 ten years later
    "feb29-retention-last-day": Case(retain("{study_date_plus: P10Y}"), {"study_date": date(2016, 2, 29)},
                                     as_of=date(2026, 2, 28)),
    "feb29-retention-over": Case(retain("{study_date_plus: P10Y}"), {"study_date": date(2016, 2, 29)},
                                 Action.EXPIRE, "r", as_of=date(2026, 3, 1)),
}


def _decide(case: Case, explain: bool = False) -> Decision:
    s = study(**case.study)
    others = tuple(study(**o) for o in case.others)
    return evaluate(policy(case.policy), s, patient_of(s, others, case.patient_holds), case.as_of, explain=explain)


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_decision(case: Case) -> None:
    d = _decide(case)
    assert d.action is case.action, d
    assert d.rule_id == case.rule, d
    assert {v.protection for v in d.vetoes} == case.vetoes, d
    for fact in case.unknown:
        assert fact in d.unknown, d
    if case.reason:
        text = d.reason + " | " + " | ".join(v.reason for v in d.vetoes)
        assert case.reason in text, d
    # explain mode never changes the decision
    e = _decide(case, explain=True)
    assert (e.action, e.rule_id, e.vetoes) == (d.action, d.rule_id, d.vetoes)


def test_explain_traces_every_rule_and_protection() -> None:
    p = policy(
        "rules:\n"
        "  - {id: mr, when: {modality: MR, study_age: {older_than: P1Y}}, action: {transition: warm}}\n"
        "  - {id: old, when: {study_age: {older_than: P10Y}}, action: expire}\n"
        "  - {id: ct, when: {modality: CT}, action: {transition: warm}}\n"
    )
    s = study()
    d = evaluate(p, s, patient_of(s), NOW, explain=True)
    assert d.action is Action.EXPIRE and d.rule_id == "old"
    mr, old, ct = d.trace
    # the miss says which condition failed and why; the other conditions are still checked
    assert mr.outcome is Outcome.MISS and mr.reached and not mr.deciding
    assert [c.outcome for c in mr.checks] == [Outcome.MISS, Outcome.MATCH]
    assert "modality CT\\SR does not satisfy" in mr.checks[0].reason
    assert old.deciding and old.outcome is Outcome.MATCH
    # later rules are evaluated for explain but marked as not reached
    assert ct.outcome is Outcome.MATCH and not ct.reached
    assert [c.protection for c in d.protections] == [
        "legal_hold", "worm_lock", "mammography", "pediatric", "minimum_retention", "recently_accessed",
        "unknown_facts"]


def test_plan_mode_carries_no_trace() -> None:
    s = study()
    d = evaluate(policy(expire_all()), s, patient_of(s), NOW)
    assert d.trace == () and d.protections == ()


def test_evaluate_all_uses_patient_facts_by_key() -> None:
    p = policy(retain("{last_encounter_plus: P10Y}"))
    old = study(study_uid="1.1", patient_key="A", study_date=date(2010, 1, 1))
    newer = study(study_uid="1.2", patient_key="A", study_date=date(2020, 1, 1))
    alone = study(study_uid="2.1", patient_key="B", study_date=date(2010, 1, 1))
    unknown_patient = study(study_uid="3.1", patient_key="C", study_date=date(2010, 1, 1))
    from ilm.policy import patient_facts_from_studies
    patients = patient_facts_from_studies([old, newer, alone])
    got = {d.study_uid: d for d in evaluate_all(p, [old, newer, alone, unknown_patient], patients, NOW)}
    assert got["1.1"].action is Action.KEEP and got["1.1"].rule_id is None  # the 2020 visit keeps it until 2030
    assert got["2.1"].action is Action.EXPIRE
    # without the patient's facts the last encounter is unknown: kept, and said why
    assert got["3.1"].action is Action.KEEP and got["3.1"].vetoes[0].protection == "unknown_facts"
    assert "last encounter" in got["3.1"].unknown


def test_undated_sibling_makes_last_encounter_unknown() -> None:
    p = policy(retain("{last_encounter_plus: P10Y}"))
    s = study(study_date=date(2010, 1, 1))
    sibling = study(study_uid="9.9", study_date=None)
    d = evaluate(p, s, patient_of(s, (sibling,)), NOW)
    assert d.action is Action.KEEP and {v.protection for v in d.vetoes} == {"unknown_facts"}
    assert "without a valid StudyDate" in d.vetoes[0].reason


def test_conflict_rule_is_documented_in_one_sentence() -> None:
    import importlib
    from pathlib import Path

    module = importlib.import_module("ilm.policy.evaluate")  # the package re-exports a function of that name
    assert CONFLICT_RULE.count(". ") == 0 and CONFLICT_RULE.endswith(".")
    assert CONFLICT_RULE in (module.__doc__ or "")
    docs = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
    assert CONFLICT_RULE in " ".join(docs.read_text().split())


def test_study_facts_default_is_usable() -> None:
    # the adapter may leave fields out: missing facts are unknown, never "old enough"
    bare = StudyFacts(study_uid="1.2")
    d = evaluate(policy(expire_all()), bare, None, NOW)
    assert d.action is Action.KEEP and d.vetoes


TEMPLATE_DIR = __import__("pathlib").Path(__file__).resolve().parents[2] / "policies"

# (template, study, the patient's other studies, expected action, expected rule)
TEMPLATE_CASES: dict[str, tuple[str, dict[str, Any], tuple[dict[str, Any], ...], Action, str | None]] = {
    # Texas: an adult's 2010 CT, no later visit: 10 years are over
    "texas-adult-expired": ("us-mqsa-texas", {}, (), Action.EXPIRE, "texas-hospital-records"),
    # Texas: a child's 2012 CT is kept to the 20th birthday (2028) and meanwhile tiered
    "texas-child-retained-and-tiered": ("us-mqsa-texas", {"birth_date": date(2008, 1, 1), "study_date": date(2012, 1, 1)},
                                        (), Action.TRANSITION, "ct-mr-to-warm"),
    # Texas: a 2014 mammogram with a visit in 2020 is kept until 2030
    "texas-mammogram-last-encounter": ("us-mqsa-texas", {**MG, "study_date": date(2014, 1, 1)},
                                       ({"study_uid": "9.9", "study_date": date(2020, 1, 1)},), Action.KEEP, None),
    # France: 20 years from the last visit, 2010 -> 2030
    "france-adult-retained": ("france-csp", {}, (), Action.TRANSITION, "ct-mr-to-warm"),
    # Germany: an examination 10 years after the last one, 2010 -> 2020
    "germany-examination-expired": ("germany-strlschg", {}, (), Action.EXPIRE, "examinations-10y"),
    # Germany: radiotherapy 30 years
    "germany-radiotherapy-retained": ("germany-strlschg", {"modalities": ("RTPLAN",)}, (), Action.KEEP, None),
    # UK: screening mammogram of 2014, 10 years from acquisition are over
    "uk-screening-expired": ("uk-nhs-rcr", {**MG, "study_date": date(2014, 1, 1)}, (), Action.EXPIRE,
                             "screening-mammography-10y"),
    # UK: anything else 30 years from last contact
    "uk-default-retained": ("uk-nhs-rcr", {}, (), Action.TRANSITION, "ct-mr-to-warm"),
    # the tiering example never expires
    "example-tiering": ("example-tiering", {}, (), Action.TRANSITION, "ct-mr-to-warm"),
    "example-tiering-teaching": ("example-tiering", {"labels": ("teaching",)}, (), Action.KEEP, "keep-teaching-files-hot"),
}


@pytest.mark.parametrize("name, kw, others, action, rule", list(TEMPLATE_CASES.values()), ids=list(TEMPLATE_CASES))
def test_templates_decide(name: str, kw: dict[str, Any], others: tuple[dict[str, Any], ...],
                          action: Action, rule: str | None) -> None:
    p = policy((TEMPLATE_DIR / f"{name}.yaml").read_text())
    s = study(**kw)
    d = evaluate(p, s, patient_of(s, tuple(study(**o) for o in others)), NOW)
    assert (d.action, d.rule_id) == (action, rule), d
