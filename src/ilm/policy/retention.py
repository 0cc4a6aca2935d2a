"""Patient-level retention: ``retain:`` on an expire rule.

A retention term computes the last day a study must be kept:

- ``study_date_plus: P``     StudyDate + P
- ``last_encounter_plus: P`` the patient's newest StudyDate + P (any later study extends it)
- ``birth_plus: P``          PatientBirthDate + P, that is "until the Nth birthday"
- ``mqsa: {years: 5, without_later_mammogram_years: 10}``
                             StudyDate + 5 years if the patient has a later
                             mammogram in the archive, else StudyDate + 10 years
- ``max: [term, ...]``       the latest of several terms

``retain`` is a condition of its rule: it matches once the "as of" day is
after the retention end, and misses (the study falls through to the next
rule) while the study is still retained. A term whose fact is missing is
UNKNOWN, except inside ``max`` when a known term already keeps the study.
When the birth date comes from PatientAge, the latest possible birth date is
used, which keeps the study longest. Death + N is not expressible: the
catalog holds no date of death (see docs/policies.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import date

from ilm.policy.conditions import Check, Condition, Outcome
from ilm.policy.context import StudyContext, Unknown
from ilm.policy.durations import Period

__all__ = [
    "Term", "StudyDatePlus", "LastEncounterPlus", "BirthPlus", "Mqsa", "Latest", "RetainCondition",
]


@dataclass(frozen=True, slots=True)
class Until:
    """A computed retention end (the last day the study is kept) and how it was computed."""

    day: date
    how: str


class Term(ABC):
    @abstractmethod
    def until(self, ctx: StudyContext) -> Until | Unknown: ...

    @abstractmethod
    def key(self) -> Hashable: ...


@dataclass(frozen=True, slots=True)
class StudyDatePlus(Term):
    period: Period

    def until(self, ctx: StudyContext) -> Until | Unknown:
        sd = ctx.study_date
        if isinstance(sd, Unknown):
            return sd
        return Until(self.period.add_to(sd), f"StudyDate {sd.isoformat()} + {self.period}")

    def key(self) -> Hashable:
        return ("study_date_plus", self.period)


@dataclass(frozen=True, slots=True)
class LastEncounterPlus(Term):
    period: Period

    def until(self, ctx: StudyContext) -> Until | Unknown:
        last = ctx.last_encounter
        if isinstance(last, Unknown):
            return last
        return Until(self.period.add_to(last), f"last encounter {last.isoformat()} + {self.period}")

    def key(self) -> Hashable:
        return ("last_encounter_plus", self.period)


@dataclass(frozen=True, slots=True)
class BirthPlus(Term):
    period: Period

    def until(self, ctx: StudyContext) -> Until | Unknown:
        birth = ctx.birth_range
        if isinstance(birth, Unknown):
            return birth
        _, latest, source = birth
        return Until(self.period.add_to(latest), f"birth ({source}) + {self.period}")

    def key(self) -> Hashable:
        return ("birth_plus", self.period)


@dataclass(frozen=True, slots=True)
class Mqsa(Term):
    """21 CFR 900.12(c)(4)(i): 5 years, or 10 if the patient had no later mammogram here."""

    years: int = 5
    without_later_mammogram_years: int = 10

    def until(self, ctx: StudyContext) -> Until | Unknown:
        sd = ctx.study_date
        if isinstance(sd, Unknown):
            return sd
        later = ctx.later_mammogram
        if later is not None:
            p = Period(years=self.years)
            how = f"MQSA: StudyDate {sd.isoformat()} + {p} (later mammogram on {later.isoformat()})"
        else:
            p = Period(years=self.without_later_mammogram_years)
            how = f"MQSA: StudyDate {sd.isoformat()} + {p} (no later mammogram)"
        return Until(p.add_to(sd), how)

    def key(self) -> Hashable:
        return ("mqsa", self.years, self.without_later_mammogram_years)


@dataclass(frozen=True, slots=True)
class Latest(Term):
    """``max: [...]``: the latest end among the terms."""

    terms: tuple[Term, ...]

    def until(self, ctx: StudyContext) -> Until | Unknown:
        known: list[Until] = []
        unknown: list[Unknown] = []
        for t in self.terms:
            r = t.until(ctx)
            (unknown if isinstance(r, Unknown) else known).append(r)  # type: ignore[arg-type]
        best = max(known, key=lambda u: u.day) if known else None
        if unknown:
            # A known term that already keeps the study decides; otherwise the
            # missing one might have kept it longer.
            if best is not None and best.day >= ctx.as_of:
                return Until(best.day, f"at least {best.how} (unknown: {'; '.join(u.reason for u in unknown)})")
            facts = tuple(dict.fromkeys(f for u in unknown for f in u.facts))
            return Unknown(facts, "; ".join(u.reason for u in unknown))
        assert best is not None
        return Until(best.day, f"latest of [{'; '.join(f'{u.how} = {u.day.isoformat()}' for u in known)}]")

    def key(self) -> Hashable:
        return ("max", frozenset(t.key() for t in self.terms))


@dataclass(frozen=True, slots=True)
class RetainCondition(Condition):
    """Matches once the retention ``term`` is over on the "as of" day."""

    term: Term
    field: str = "retain"

    def check(self, ctx: StudyContext) -> Check:
        r = self.term.until(ctx)
        if isinstance(r, Unknown):
            return Check(self.field, Outcome.UNKNOWN, f"retention end unknown: {r.reason}", r.facts)
        if ctx.as_of > r.day:
            return Check(self.field, Outcome.MATCH, f"retention ended {r.day.isoformat()} ({r.how})")
        return Check(self.field, Outcome.MISS, f"retained until {r.day.isoformat()} ({r.how})")

    def key(self) -> Hashable:
        return (self.field, self.term.key())
