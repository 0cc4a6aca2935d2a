"""Property: whatever the rules, no protected study is ever expired without a veto.

Protected here is computed independently of ilm's own code: a legal hold; a
mammogram inside its MQSA window (5 years, 10 without a later mammogram); a
study made in childhood inside the pediatric window (until age 28); a missing
or unparsable StudyDate, or no usable birth date and PatientAge.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timezone

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ilm.policy import Action, Hold, HoldScope, PatientFacts, StudyFacts, check_policy, evaluate

from .helpers import BREAST_TOMO, CT_IMAGE, MG_PRESENTATION, SECONDARY_CAPTURE, TIERS

RULE_POOL = [
    "{id: %s, when: {modality: MG}, action: expire}",
    "{id: %s, when: {mammography: true}, action: expire}",
    "{id: %s, when: {study_age: {older_than: 1y}}, action: expire}",
    "{id: %s, when: {study_age: {younger_than: 30y}}, action: expire}",
    "{id: %s, when: {patient_age_at_study: {younger_than: P18Y}}, action: expire}",
    "{id: %s, when: {patient_age_now: {older_than: P1Y}}, action: expire}",
    "{id: %s, when: {not: {study_age: {younger_than: 1y}}}, action: expire}",
    "{id: %s, when: {any: [{modality: CT}, {body_part: BREAST}]}, action: expire}",
    "{id: %s, when: {since_last_access: {older_than: 1d}}, action: expire}",
    "{id: %s, retain: {birth_plus: P1Y}, action: expire}",
    "{id: %s, retain: {mqsa: {years: 1, without_later_mammogram_years: 2}}, action: expire}",
    "{id: %s, retain: {max: [{last_encounter_plus: P1Y}, {study_date_plus: P6M}]}, action: expire}",
    "{id: %s, when: {modality: CT}, action: {transition: warm}}",
    "{id: %s, when: {labels: keep-me}, action: keep}",
]
CATCH_ALL = "{id: last, action: expire}"

dates = st.dates(min_value=date(1930, 1, 1), max_value=date(2040, 12, 31))
ages = st.sampled_from(["", "045Y", "008Y", "017Y", "006M", "010W", "003D", "45", "XYZ", "200Y"])


def _plus_years(d: date, years: int) -> date:
    y = d.year + years
    return date(y, d.month, min(d.day, calendar.monthrange(y, d.month)[1]))


@st.composite
def policies(draw: st.DrawFn) -> str:
    chosen = draw(st.lists(st.sampled_from(range(len(RULE_POOL))), unique=True, max_size=6))
    rules = [RULE_POOL[i] % f"r{i}" for i in chosen]
    if draw(st.booleans()):
        rules.append(CATCH_ALL)
    return "rules:\n" + "".join(f"  - {r}\n" for r in rules)


@st.composite
def studies(draw: st.DrawFn) -> tuple[StudyFacts, PatientFacts]:
    study_date = draw(st.none() | dates)
    raw_date = study_date.strftime("%Y%m%d") if study_date else draw(st.sampled_from(["", "2010-13-45", "junk"]))
    birth = draw(st.none() | dates)
    modalities = tuple(draw(st.lists(st.sampled_from(["CT", "MR", "MG", "OT", "SR", "US"]), unique=True, max_size=3)))
    sops = tuple(draw(st.lists(st.sampled_from([CT_IMAGE, MG_PRESENTATION, BREAST_TOMO, SECONDARY_CAPTURE]),
                               unique=True, max_size=2)))
    parts = tuple(draw(st.lists(st.sampled_from(["BREAST", "CHEST", "HEAD"]), unique=True, max_size=2)))
    held = draw(st.booleans())
    received = draw(dates)
    accessed = draw(st.none() | dates)
    s = StudyFacts(
        study_uid="1.2.3", patient_key="P", study_date=study_date, study_date_raw=raw_date,
        birth_date=birth, birth_date_raw=birth.strftime("%Y%m%d") if birth else "",
        patient_age_raw=draw(ages), modalities=modalities, sop_classes=sops, body_parts=parts,
        tiers=("hot",), labels=draw(st.sampled_from([(), ("keep-me",)])),
        received_at=datetime(received.year, received.month, received.day, tzinfo=timezone.utc),
        last_accessed_at=datetime(accessed.year, accessed.month, accessed.day) if accessed else None,
        holds=(Hold(HoldScope.STUDY, "litigation"),) if held else (),
    )
    patient_held = draw(st.booleans()) and not held
    mammograms = tuple(draw(st.lists(dates, max_size=3)))
    newest = max([d for d in (study_date, *draw(st.lists(dates, max_size=2))) if d], default=None)
    p = PatientFacts("P", newest_study_date=newest, undated_study_count=draw(st.integers(0, 1)),
                     mammogram_dates=mammograms,
                     holds=(Hold(HoldScope.PATIENT, "subpoena"),) if patient_held else ())
    return s, p


def protected(s: StudyFacts, p: PatientFacts, as_of: date) -> str | None:
    """Why the study must not be expired on ``as_of``, computed from first principles."""
    if s.holds or p.holds:
        return "hold"
    if s.study_date is None:
        return "no study date"
    mammo = ("MG" in s.modalities or {MG_PRESENTATION, BREAST_TOMO} & set(s.sop_classes)
             or (SECONDARY_CAPTURE in s.sop_classes and "BREAST" in s.body_parts))
    if mammo:
        later = any(d > s.study_date for d in p.mammogram_dates)
        if as_of <= _plus_years(s.study_date, 5 if later else 10):
            return "mammography"
    if s.birth_date is None:
        age = s.patient_age_raw
        if age not in ("045Y", "008Y", "017Y", "006M", "010W", "003D"):
            return "no birth date or PatientAge"
        # born at the latest that many years before the study, so kept at least
        # until the study date plus the years left to the 28th birthday
        left = {"045Y": None, "008Y": 20, "017Y": 11}.get(age, 27)  # months, weeks, days: a baby
        if left is not None and as_of <= _plus_years(s.study_date, left):
            return "child (PatientAge)"
    elif s.study_date < _plus_years(s.birth_date, 18) and as_of <= _plus_years(s.birth_date, 28):
        return "child"
    return None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(text=policies(), facts=studies(), as_of=dates)
def test_no_protected_study_is_expired(text: str, facts: tuple[StudyFacts, PatientFacts], as_of: date) -> None:
    policy, issues = check_policy(text, known_tiers=TIERS)
    assume(policy is not None)  # some draws shadow a rule; those are refused, not evaluated
    assert policy is not None
    s, p = facts
    d = evaluate(policy, s, p, as_of)
    why = protected(s, p, as_of)
    if why is not None:
        assert d.action is not Action.EXPIRE, (why, d)
        if d.proposed is Action.EXPIRE:
            assert d.vetoes, (why, d)
    # an expiry always names an expire rule and carries no veto
    if d.action is Action.EXPIRE:
        assert not d.vetoes and d.rule_id is not None
        assert policy.rule(d.rule_id).action is Action.EXPIRE
    # explain mode decides the same
    e = evaluate(policy, s, p, as_of, explain=True)
    assert (e.action, e.rule_id, e.vetoes) == (d.action, d.rule_id, d.vetoes)


@settings(max_examples=300, deadline=None)
@given(facts=studies(), as_of=dates)
def test_vetoes_never_touch_transitions(facts: tuple[StudyFacts, PatientFacts], as_of: date) -> None:
    policy, _ = check_policy("rules:\n  - {id: t, action: {transition: warm}}\n", known_tiers=TIERS)
    assert policy is not None
    d = evaluate(policy, facts[0], facts[1], as_of)
    assert d.action is Action.TRANSITION and not d.vetoes
