"""Hypothesis strategies: small archives full of awkward facts, and random policies.

Archives: a few patients with one to four studies each; missing, unparsable
and 29-February dates; PatientAge without a birth date; children; screening
mammograms with and without later ones (as MG, as a mammography SOP class,
as Secondary Capture of the breast); quarantined and purging siblings;
holds on studies and patients (some released); several tiers; text with
blanks around separators, odd case and non-ASCII look-alikes (``BREAſT``,
the Kelvin sign); reads at times near midnight in other time zones.

Policies: rules built from every condition, matcher, retention term and
action the language has, nested ``not`` / ``any``, and protections tuned or
turned off.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from hypothesis import strategies as st

from ilm.policy.conditions import (
    AgeCondition, AnyCondition, AttributeCondition, Condition, DateCondition, FlagCondition, NotCondition,
    RangeCondition,
)
from ilm.policy.durations import Period
from ilm.policy.matchers import Empty, Equals, Matcher, Negated, OneOf, Regex
from ilm.policy.protections import (
    MammographyRetention, MinimumRetention, PediatricRetention, Protections, RecentlyAccessed, Switch, UnknownFacts,
)
from ilm.policy.retention import BirthPlus, LastEncounterPlus, Latest, Mqsa, RetainCondition, StudyDatePlus, Term
from ilm.policy.rules import Action, Policy, Rule

from .helpers import CT, MG, TIERS, H, P, S

__all__ = ["archives", "policies", "as_of_dates", "dates"]

SC = "1.2.840.10008.5.1.4.1.1.7"
TOMO = "1.2.840.10008.5.1.4.1.1.13.1.3"
CR = "1.2.840.10008.5.1.4.1.1.1"

LEAP_DAYS = [date(y, 2, 29) for y in (1996, 2000, 2004, 2008, 2012, 2016, 2020, 2024, 2028)]
MONTH_ENDS = [date(2001, 1, 31), date(2003, 3, 31), date(2005, 8, 31), date(2011, 12, 31), date(2019, 2, 28)]
dates = st.one_of(
    st.dates(min_value=date(1990, 1, 1), max_value=date(2035, 12, 31)),
    st.sampled_from(LEAP_DAYS + MONTH_ENDS),
)
birth_dates = st.one_of(
    st.dates(min_value=date(1920, 1, 1), max_value=date(2030, 12, 31)),
    st.sampled_from([date(1992, 2, 29), date(2000, 2, 29), date(2008, 2, 29), date(2012, 2, 29), date(2007, 3, 1)]),
)
MODALITIES = ["CT", "MR", "MG", "OT", "SR", "US", "CT\\SR", "MG\\SR", "mg", " MG", "MG ", "CT \\ MR", "Mg\\OT",
              "", "ＭＧ", "RTPLAN", "RTSTRUCT\\CT"]
SOPS = [CT, MG, TOMO, SC, CR, f"{CT}\\{SC}", f"{SC}\\{MG}", f" {MG}", f"{MG}.1", "", f"{SC} "]
BODY_PARTS = ["CHEST", "BREAST", "breast", " BREAST", "BREAſT", "HEAD", "BREAST\\CHEST", "", "BRE AST"]
LABELS = ["", "teaching", "keep-me", "Teaching\\x", "teaching ", "x\\ teaching", "TEACHING", "téaching", "\u212aeep-me"]
TIER_VALUES = ["", "hot", "warm", "hot\\warm", " hot", "HOT", "hot\\hot"]
DESCRIPTIONS = ["CT CHEST", "ct chest", " CT CHEST ", "Thorax – contrôle", "MAMMO SCREEN", "", "a\\b", "\tCT"]
AGES = ["", "045Y", "008Y", "017Y", "006M", "010W", "003D", "45", "XYZ", "200Y", "018Y", "002Y"]


def _moment(d: date, draw: st.DrawFn) -> datetime:
    tz = draw(st.sampled_from([timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]))
    hour = draw(st.sampled_from([0, 1, 12, 22, 23]))
    return datetime(d.year, d.month, d.day, hour, draw(st.sampled_from([0, 59])), tzinfo=tz)


@st.composite
def archives(draw: st.DrawFn, max_patients: int = 5) -> tuple[list[P], list[S], list[H]]:
    n_pat = draw(st.integers(1, max_patients))
    pats: list[P] = []
    for i in range(n_pat):
        birth = draw(st.none() | birth_dates)
        raw = None if birth is not None else draw(st.sampled_from(["", "19XX0101", "junk"]))
        pid = draw(st.sampled_from([f"P{i}", f"P{i}", f"MRN:{i}"]))
        pats.append(P(pid, birth, raw, issuer=draw(st.sampled_from(["", "", "H"])),
                      sex=draw(st.sampled_from(["F", "M", "", "f "]))))
    rows: list[S] = []
    for i in range(draw(st.integers(1, 4 * n_pat))):
        sd = draw(st.none() | dates)
        raw = None if sd is not None else draw(st.sampled_from(["", "2010-13-45", "junk"]))
        received = sd or draw(dates)
        read = draw(st.none() | dates)
        rows.append(S(
            uid=f"1.2.826.0.1.{i}", patient=draw(st.integers(0, n_pat - 1)), study_date=sd, study_date_raw=raw,
            patient_age=draw(st.sampled_from(AGES)), modalities=draw(st.sampled_from(MODALITIES)),
            sop_classes=draw(st.sampled_from(SOPS)), body_parts=draw(st.sampled_from(BODY_PARTS)),
            description=draw(st.sampled_from(DESCRIPTIONS)), institution=draw(st.sampled_from(["General", "", "Ünı"])),
            labels=draw(st.sampled_from(LABELS)), tiers=draw(st.sampled_from(TIER_VALUES)),
            size_bytes=draw(st.integers(0, 5_000_000_000)), instance_count=draw(st.integers(0, 2000)),
            state=draw(st.sampled_from(["active"] * 6 + ["quarantined", "purging"])),
            received_at=_moment(received, draw), last_accessed_at=_moment(read, draw) if read else None,
            identity_removed=draw(st.booleans()),
        ))
    hold_rows: list[H] = []
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            hold_rows.append(H("study", draw(st.sampled_from(rows)).uid, released=draw(st.booleans())))
        else:
            p = draw(st.sampled_from(pats))
            key = f"{p.issuer}:{p.patient_id}" if p.issuer else p.patient_id
            hold_rows.append(H("patient", key, released=draw(st.booleans())))
    return pats, rows, hold_rows


PERIODS = [Period(), Period(days=1), Period(days=29), Period(days=30), Period(months=1), Period(months=6),
           Period(years=1), Period(years=1, months=1, days=1), Period(years=2), Period(years=5), Period(years=10),
           Period(years=18), Period(years=20), Period(years=28), Period(years=4, days=366), Period(years=200)]
periods = st.sampled_from(PERIODS)
ATTRIBUTE_VALUES = {
    "modality": ["CT", "mr", "MG", " mg ", "RTPLAN", "", "ct\\mr", "ＭＧ"],
    "sop_class": [CT, MG, SC, f" {TOMO}"],
    "body_part": ["BREAST", "chest", "breast "],
    "labels": ["teaching", "keep-me", "TEACHING", "keep-ME"],
    "current_tier": ["hot", "warm"],
    "description": ["CT CHEST", "ct chest", "thorax – contrôle", "a\\b", "mammo screen"],
    "institution": ["General", "ÜNI", ""],
    "patient_id": ["P0", "p1", "MRN:2"],
    "sex": ["F", "m"],
    "station": ["", "CT01"],
}
REGEXES = ["RT.*", "(?i)ct", "MG|CT", ".*", "C.", "(?i)BREA.T", "téaching|teaching", r"\w+"]


def _matcher(draw: st.DrawFn, name: str, allow_regex: bool, depth: int = 0) -> Matcher:
    kinds = ["equals", "one_of", "empty"] + (["regex"] if allow_regex else []) + (["not"] if depth < 2 else [])
    kind = draw(st.sampled_from(kinds))
    values = ATTRIBUTE_VALUES[name]
    if kind == "equals":
        return Equals(draw(st.sampled_from(values)))
    if kind == "one_of":
        return OneOf(tuple(draw(st.lists(st.sampled_from(values), min_size=1, max_size=3))))
    if kind == "empty":
        return Empty(draw(st.booleans()))
    if kind == "regex":
        pattern = draw(st.sampled_from(REGEXES))
        return Regex(pattern, re.compile(pattern))
    return Negated(_matcher(draw, name, allow_regex, depth + 1))


def _term(draw: st.DrawFn, depth: int = 0) -> Term:
    kinds = ["study", "encounter", "birth", "mqsa"] + (["max"] if depth == 0 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "study":
        return StudyDatePlus(draw(periods))
    if kind == "encounter":
        return LastEncounterPlus(draw(periods))
    if kind == "birth":
        return BirthPlus(draw(periods))
    if kind == "mqsa":
        years = draw(st.integers(1, 6))
        return Mqsa(years, years + draw(st.integers(0, 6)))
    return Latest(tuple(_term(draw, depth + 1) for _ in range(draw(st.integers(1, 3)))))


def _condition(draw: st.DrawFn, allow_regex: bool, depth: int = 0) -> Condition:
    kinds = ["attribute", "attribute", "age", "age", "date", "range", "flag"] + (["not", "any"] if depth < 2 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "attribute":
        name = draw(st.sampled_from(sorted(ATTRIBUTE_VALUES)))
        return AttributeCondition(name, _matcher(draw, name, allow_regex))
    if kind == "age":
        f = draw(st.sampled_from(["study_age", "since_last_access", "since_received", "patient_age_at_study",
                                  "patient_age_now"]))
        older, younger = draw(st.none() | periods), draw(st.none() | periods)
        if older is None and younger is None:
            older = draw(periods)
        return AgeCondition(f, older, younger)
    if kind == "date":
        before, after = draw(st.none() | dates), draw(st.none() | dates)
        return DateCondition("study_date", before, after or (None if before else draw(dates)))
    if kind == "range":
        f = draw(st.sampled_from(["study_size", "instance_count"]))
        return RangeCondition(f, draw(st.none() | st.integers(0, 3_000_000_000)),
                              draw(st.none() | st.integers(0, 3_000_000_000)))
    if kind == "flag":
        return FlagCondition(draw(st.sampled_from(["mammography", "mammography", "identity_removed"])), draw(st.booleans()))
    if kind == "not":
        return NotCondition(tuple(_condition(draw, allow_regex, depth + 1) for _ in range(draw(st.integers(1, 2)))))
    groups = tuple(tuple(_condition(draw, allow_regex, depth + 1) for _ in range(draw(st.integers(1, 2))))
                   for _ in range(draw(st.integers(2, 3))))
    return AnyCondition(groups)


def _switch(draw: st.DrawFn) -> Switch:
    return Switch() if draw(st.integers(0, 3)) else Switch(False, "test")


@st.composite
def protections(draw: st.DrawFn) -> Protections:
    if draw(st.booleans()):
        return Protections()
    years = draw(st.integers(1, 6))
    return Protections(
        mammography=MammographyRetention(_switch(draw), years, years + draw(st.integers(0, 6))),
        pediatric=PediatricRetention(_switch(draw), draw(st.integers(1, 21)), draw(st.integers(0, 12))),
        minimum_retention=MinimumRetention(_switch(draw), draw(periods)),
        recently_accessed=RecentlyAccessed(_switch(draw), draw(periods)),
        unknown_facts=UnknownFacts(_switch(draw)),
    )


@st.composite
def policies(draw: st.DrawFn, allow_regex: bool = True) -> Policy:
    rules = []
    for k in range(draw(st.integers(1, 4))):
        conditions = [_condition(draw, allow_regex) for _ in range(draw(st.integers(0, 3)))]
        action = draw(st.sampled_from([Action.EXPIRE, Action.EXPIRE, Action.TRANSITION, Action.KEEP]))
        if action is Action.EXPIRE and draw(st.booleans()):
            conditions.append(RetainCondition(_term(draw)))
        tier = draw(st.sampled_from(TIERS)) if action is Action.TRANSITION else None
        rules.append(Rule(f"r{k}", action, tuple(conditions), tier))
    return Policy("random", tuple(rules), draw(protections()))


@st.composite
def as_of_dates(draw: st.DrawFn, archive: tuple[list[P], list[S], list[H]]) -> date:
    """Any day, or a day right at a boundary: a study's date or a birth date plus a period, plus 0 or 1 day."""
    _, rows, _ = archive
    if draw(st.booleans()):
        return draw(dates)
    anchors = [s.study_date for s in rows if s.study_date] or [date(2010, 1, 1)]
    base = draw(st.sampled_from(anchors))
    return Period(years=draw(st.sampled_from([0, 1, 2, 5, 10, 18, 20, 28]))).add_to(base) + timedelta(
        days=draw(st.sampled_from([-1, 0, 1, 2])))
