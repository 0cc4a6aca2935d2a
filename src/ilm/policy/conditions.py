"""Rule conditions: what a study must look like for a rule to apply.

Every condition answers MATCH, MISS or UNKNOWN (a fact it needs is missing)
with a one-line reason, so ``ilm explain`` can say why a rule did not apply.
Several conditions in one rule must all match; ``not`` negates a group and
``any`` matches if one of its groups does. UNKNOWN stays UNKNOWN through
negation, so a missing fact never turns into a match by accident.

Attribute conditions compare text: ``equals`` and ``one_of`` ignore case and
surrounding spaces; ``regex`` must match a whole value (Python syntax, use
``(?i)`` to ignore case). A multi-valued attribute (modalities, SOP classes,
body parts, stations, labels, tiers) matches if any of its values does, so
``not: MG`` on ``modality`` means "no MG series in the study".
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import date

from ilm.policy.context import StudyContext, Unknown
from ilm.policy.durations import Period
from ilm.policy.facts import StudyFacts
from ilm.policy.matchers import Matcher
from ilm.policy.sizes import format_size

__all__ = [
    "Outcome", "Check", "Condition", "AttributeCondition", "AgeCondition", "DateCondition", "RangeCondition", "FlagCondition",
    "NotCondition", "AnyCondition", "ATTRIBUTES", "ATTRIBUTE_ALIASES", "AGE_FIELDS",
    "all_of",
]


class Outcome(str, enum.Enum):
    MATCH = "match"
    MISS = "miss"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one condition for one study, with the reason."""

    field: str
    outcome: Outcome
    reason: str
    facts: tuple[str, ...] = ()  # missing facts when UNKNOWN


class Condition(ABC):
    """One condition of a rule."""

    field: str

    @abstractmethod
    def check(self, ctx: StudyContext) -> Check: ...

    @abstractmethod
    def key(self) -> Hashable:
        """A canonical value: equal keys mean the same condition (used to find shadowed rules)."""


def all_of(conditions: Sequence[Condition], ctx: StudyContext, *, full: bool = True) -> tuple[Outcome, tuple[Check, ...]]:
    """Conjunction: MISS if any misses, else UNKNOWN if any is unknown, else MATCH.

    With ``full`` false, stops at the first MISS.
    """
    checks: list[Check] = []
    outcome = Outcome.MATCH
    for c in conditions:
        r = c.check(ctx)
        checks.append(r)
        if r.outcome is Outcome.MISS:
            outcome = Outcome.MISS
            if not full:
                break
        elif r.outcome is Outcome.UNKNOWN and outcome is Outcome.MATCH:
            outcome = Outcome.UNKNOWN
    return outcome, tuple(checks)


def _one(v: str) -> tuple[str, ...]:
    return (v,) if v.strip() else ()


# Attribute name -> how to read it from StudyFacts. Multi-valued ones are tuples.
ATTRIBUTES: dict[str, Callable[[StudyFacts], tuple[str, ...]]] = {
    "study_uid": lambda s: _one(s.study_uid),
    "modality": lambda s: s.modalities,
    "sop_class": lambda s: s.sop_classes,
    "body_part": lambda s: s.body_parts,
    "institution": lambda s: _one(s.institution),
    "station": lambda s: s.stations,
    "manufacturer": lambda s: s.manufacturers,
    "description": lambda s: _one(s.description),
    "accession": lambda s: _one(s.accession),
    "patient_id": lambda s: _one(s.patient_id),
    "issuer": lambda s: _one(s.issuer),
    "sex": lambda s: _one(s.sex),
    "labels": lambda s: s.labels,
    "current_tier": lambda s: s.tiers,
}
# DICOM keywords and plurals accepted for the names above.
ATTRIBUTE_ALIASES: dict[str, str] = {
    "StudyInstanceUID": "study_uid", "Modality": "modality", "ModalitiesInStudy": "modality",
    "modalities": "modality", "SOPClassUID": "sop_class", "sop_classes": "sop_class",
    "BodyPartExamined": "body_part", "body_parts": "body_part", "InstitutionName": "institution",
    "StationName": "station", "stations": "station", "Manufacturer": "manufacturer",
    "manufacturers": "manufacturer", "StudyDescription": "description",
    "AccessionNumber": "accession", "PatientID": "patient_id", "IssuerOfPatientID": "issuer",
    "PatientSex": "sex", "label": "labels", "tier": "current_tier", "tiers": "current_tier",
}


@dataclass(frozen=True, slots=True)
class AttributeCondition(Condition):
    field: str
    matcher: Matcher

    def check(self, ctx: StudyContext) -> Check:
        values = ATTRIBUTES[self.field](ctx.study)
        shown = "\\".join(values) if values else "(empty)"
        ok = self.matcher.matches(values)
        verb = "" if ok else "not "
        return Check(self.field, Outcome.MATCH if ok else Outcome.MISS,
                     f"{self.field} {shown!s} does {verb}satisfy: {self.matcher.describe()}")

    def key(self) -> Hashable:
        return (self.field, self.matcher.key())


# ---- time --------------------------------------------------------------------------------

AGE_FIELDS = ("study_age", "since_last_access", "since_received", "patient_age_at_study", "patient_age_now")


@dataclass(frozen=True, slots=True)
class AgeCondition(Condition):
    """``older_than`` / ``younger_than`` a period, measured from a date to a reference day.

    Older than P on day R means R is after start + P; younger than P means R
    is on or before start + P, so exactly one of the two holds on any day.
    When the start is only known as a range (a birth date from PatientAge),
    the condition matches only if it holds for the whole range.
    """

    field: str
    older_than: Period | None = None
    younger_than: Period | None = None

    def _start(self, ctx: StudyContext) -> tuple[date, date, date, str] | Unknown:
        """The start as a range (earliest, latest), the reference day, and a label."""
        if self.field in ("since_last_access", "since_received"):
            start = ctx.last_access if self.field == "since_last_access" else ctx.received
            if start is None:
                return Unknown(("received date",), "the study has no received date")
            read = self.field == "since_last_access" and ctx.study.last_accessed_at is not None
            return start, start, ctx.as_of, f"{'last read' if read else 'received'} {start.isoformat()}"
        if self.field == "patient_age_now":
            birth = ctx.birth_range
            if isinstance(birth, Unknown):
                return birth
            return birth[0], birth[1], ctx.as_of, f"patient ({birth[2]})"
        sd = ctx.study_date
        if isinstance(sd, Unknown):
            return sd
        if self.field == "study_age":
            return sd, sd, ctx.as_of, f"StudyDate {sd.isoformat()}"
        birth = ctx.birth_range  # patient_age_at_study
        if isinstance(birth, Unknown):
            return birth
        return birth[0], birth[1], sd, f"patient ({birth[2]}) at the study on {sd.isoformat()}"

    def check(self, ctx: StudyContext) -> Check:
        start = self._start(ctx)
        if isinstance(start, Unknown):
            return Check(self.field, Outcome.UNKNOWN, start.reason, start.facts)
        lo, hi, ref, what = start
        results: list[tuple[Outcome, str]] = []
        if self.older_than is not None:
            p = self.older_than
            if ref > p.add_to(hi):
                results.append((Outcome.MATCH, f"{what} is older than {p} on {ref.isoformat()}"))
            elif ref <= p.add_to(lo):
                results.append((Outcome.MISS, f"{what} is not older than {p} on {ref.isoformat()} "
                                              f"(older after {p.add_to(lo).isoformat()})"))
            else:
                results.append((Outcome.UNKNOWN, f"{what}: too imprecise to tell if older than {p}"))
        if self.younger_than is not None:
            p = self.younger_than
            if ref <= p.add_to(lo):
                results.append((Outcome.MATCH, f"{what} is younger than {p} on {ref.isoformat()}"))
            elif ref > p.add_to(hi):
                results.append((Outcome.MISS, f"{what} is not younger than {p} on {ref.isoformat()} "
                                              f"(reached {p} on {p.add_to(hi).isoformat()})"))
            else:
                results.append((Outcome.UNKNOWN, f"{what}: too imprecise to tell if younger than {p}"))
        return _combine(self.field, results, ("PatientBirthDate",))

    def key(self) -> Hashable:
        return (self.field, self.older_than, self.younger_than)


def _combine(fieldname: str, results: list[tuple[Outcome, str]], facts: tuple[str, ...]) -> Check:
    for wanted in (Outcome.MISS, Outcome.UNKNOWN):
        for outcome, reason in results:
            if outcome is wanted:
                return Check(fieldname, outcome, reason, facts if outcome is Outcome.UNKNOWN else ())
    return Check(fieldname, Outcome.MATCH, "; ".join(r for _, r in results))


@dataclass(frozen=True, slots=True)
class DateCondition(Condition):
    """``study_date: {before: DATE, after: DATE}`` (both bounds exclusive)."""

    field: str = "study_date"
    before: date | None = None
    after: date | None = None

    def check(self, ctx: StudyContext) -> Check:
        sd = ctx.study_date
        if isinstance(sd, Unknown):
            return Check(self.field, Outcome.UNKNOWN, sd.reason, sd.facts)
        results: list[tuple[Outcome, str]] = []
        if self.before is not None:
            ok = sd < self.before
            results.append((Outcome.MATCH if ok else Outcome.MISS,
                            f"StudyDate {sd.isoformat()} is {'' if ok else 'not '}before {self.before.isoformat()}"))
        if self.after is not None:
            ok = sd > self.after
            results.append((Outcome.MATCH if ok else Outcome.MISS,
                            f"StudyDate {sd.isoformat()} is {'' if ok else 'not '}after {self.after.isoformat()}"))
        return _combine(self.field, results, ())

    def key(self) -> Hashable:
        return (self.field, self.before, self.after)


@dataclass(frozen=True, slots=True)
class RangeCondition(Condition):
    """``study_size`` (bytes) or ``instance_count`` between ``at_least`` and ``at_most``, inclusive."""

    field: str
    at_least: int | None = None
    at_most: int | None = None

    def check(self, ctx: StudyContext) -> Check:
        n = ctx.study.size_bytes if self.field == "study_size" else ctx.study.instance_count
        show: Callable[[int], str] = format_size if self.field == "study_size" else str
        results: list[tuple[Outcome, str]] = []
        if self.at_least is not None:
            ok = n >= self.at_least
            results.append((Outcome.MATCH if ok else Outcome.MISS,
                            f"{self.field} {show(n)} is {'' if ok else 'not '}at least {show(self.at_least)}"))
        if self.at_most is not None:
            ok = n <= self.at_most
            results.append((Outcome.MATCH if ok else Outcome.MISS,
                            f"{self.field} {show(n)} is {'' if ok else 'not '}at most {show(self.at_most)}"))
        return _combine(self.field, results, ())

    def key(self) -> Hashable:
        return (self.field, self.at_least, self.at_most)


@dataclass(frozen=True, slots=True)
class FlagCondition(Condition):
    """``mammography: true|false`` or ``identity_removed: true|false``."""

    field: str
    expected: bool

    def check(self, ctx: StudyContext) -> Check:
        actual = ctx.mammography if self.field == "mammography" else ctx.study.identity_removed
        ok = actual is self.expected
        return Check(self.field, Outcome.MATCH if ok else Outcome.MISS, f"{self.field} is {str(actual).lower()}")

    def key(self) -> Hashable:
        return (self.field, self.expected)


# ---- composition -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotCondition(Condition):
    """Matches when the group (all of ``inner``) does not."""

    inner: tuple[Condition, ...]
    field: str = "not"

    def check(self, ctx: StudyContext) -> Check:
        outcome, checks = all_of(self.inner, ctx)
        inside = "; ".join(c.reason for c in checks)
        if outcome is Outcome.UNKNOWN:
            facts = tuple(f for c in checks for f in c.facts)
            return Check(self.field, Outcome.UNKNOWN, f"not ({inside})", facts)
        flipped = Outcome.MISS if outcome is Outcome.MATCH else Outcome.MATCH
        return Check(self.field, flipped, f"not ({inside})")

    def key(self) -> Hashable:
        return ("not", frozenset(c.key() for c in self.inner))


@dataclass(frozen=True, slots=True)
class AnyCondition(Condition):
    """Matches when at least one group matches; MISS only when every group misses."""

    groups: tuple[tuple[Condition, ...], ...]
    field: str = "any"

    def check(self, ctx: StudyContext) -> Check:
        reasons: list[str] = []
        facts: list[str] = []
        unknown = False
        for group in self.groups:
            outcome, checks = all_of(group, ctx)
            text = "; ".join(c.reason for c in checks)
            if outcome is Outcome.MATCH:
                return Check(self.field, Outcome.MATCH, text)
            if outcome is Outcome.UNKNOWN:
                unknown = True
                facts.extend(f for c in checks for f in c.facts)
            reasons.append(f"({text})")
        return Check(self.field, Outcome.UNKNOWN if unknown else Outcome.MISS,
                     "none of: " + " | ".join(reasons), tuple(facts))

    def key(self) -> Hashable:
        return ("any", frozenset(frozenset(c.key() for c in g) for g in self.groups))
