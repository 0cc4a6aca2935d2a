"""Facts derived for one evaluation, computed once and failing closed.

A :class:`StudyContext` wraps the study, its patient and the "as of" date,
and derives what conditions and protections need: the study date, the range
in which the patient was born (from PatientBirthDate, or from PatientAge at
the study when the birth date is missing), the last encounter, the last
access. A fact that cannot be derived is an :class:`Unknown` that names the
missing DICOM attribute and says why, so a kept study can be explained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Generic, TypeVar, overload

from ilm.policy.ages import AgeError, parse_age
from ilm.policy.facts import PatientFacts, StudyFacts, is_mammography

__all__ = ["Unknown", "StudyContext", "day_of"]


@dataclass(frozen=True, slots=True)
class Unknown:
    """A fact evaluation needed but could not establish."""

    facts: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        return self.reason


def day_of(moment: datetime) -> date:
    """The calendar day of a timestamp, in UTC when it carries a time zone."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.date()


def _date_problem(name: str, raw: str) -> Unknown:
    if raw.strip():
        return Unknown((name,), f"{name} {raw.strip()!r} is not a valid date")
    return Unknown((name,), f"{name} is missing")


_T = TypeVar("_T")


class _derived(Generic[_T]):
    """functools.cached_property without its lock: computed on first read, then a plain attribute.

    Python 3.11's takes a lock shared by every instance at each first read,
    a tenth of the time of the studies a plan evaluates in Python; a
    StudyContext is made and read in one thread.
    """

    def __init__(self, fn: Callable[[Any], _T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> "_derived[_T]": ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> "_T | _derived[_T]":
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


class StudyContext:
    """One study, its patient and the evaluation date, with derived facts cached."""

    def __init__(self, study: StudyFacts, patient: PatientFacts | None, as_of: date) -> None:
        self.study = study
        self.patient = patient
        self.as_of = as_of

    @_derived
    def study_date(self) -> date | Unknown:
        if self.study.study_date is not None:
            return self.study.study_date
        return _date_problem("StudyDate", self.study.study_date_raw)

    @_derived
    def birth_range(self) -> tuple[date, date, str] | Unknown:
        """Earliest and latest possible birth date, and where they come from."""
        s = self.study
        if s.birth_date is not None:
            return s.birth_date, s.birth_date, f"PatientBirthDate {s.birth_date.isoformat()}"
        birth_problem = _date_problem("PatientBirthDate", s.birth_date_raw)
        if not s.patient_age_raw.strip():
            return Unknown(
                ("PatientBirthDate", "PatientAge"), f"{birth_problem.reason} and PatientAge is empty"
            )
        try:
            age = parse_age(s.patient_age_raw)
        except AgeError as exc:
            return Unknown(("PatientBirthDate", "PatientAge"), f"{birth_problem.reason} and {exc}")
        study_day = self.study_date
        if isinstance(study_day, Unknown):
            return Unknown(
                ("PatientBirthDate", "StudyDate"),
                f"{birth_problem.reason}, and PatientAge {age} cannot be dated because {study_day.reason}",
            )
        lo, hi = age.birth_bounds(study_day)
        return lo, hi, f"PatientAge {age} at the study (born {lo.isoformat()}..{hi.isoformat()})"

    @_derived
    def last_encounter(self) -> date | Unknown:
        """The patient's newest StudyDate, this study included."""
        own = self.study_date
        if isinstance(own, Unknown):
            return own
        p = self.patient
        if p is None:
            return Unknown(("last encounter",), "the patient's other studies were not given")
        if p.undated_study_count:
            return Unknown(
                ("StudyDate",),
                f"the patient has {p.undated_study_count} studies without a valid StudyDate, "
                "so the last encounter is unknown",
            )
        if p.newest_study_date is None or p.newest_study_date < own:
            return own
        return p.newest_study_date

    @_derived
    def received(self) -> date | None:
        r = self.study.received_at
        return day_of(r) if r is not None else None

    @_derived
    def last_access(self) -> date | None:
        """When the study was last read, or received if it was never read."""
        a = self.study.last_accessed_at
        return day_of(a) if a is not None else self.received

    @_derived
    def last_activity(self) -> date | None:
        """The later of last read and received."""
        days = [d for d in (self.received, self.last_access) if d is not None]
        return max(days) if days else None

    @_derived
    def mammography(self) -> bool:
        return is_mammography(self.study)

    @_derived
    def later_mammogram(self) -> date | None:
        """The first mammogram of the patient after this study, if any is known."""
        own = self.study_date
        if isinstance(own, Unknown) or self.patient is None:
            return None
        later = [d for d in self.patient.mammogram_dates if d > own]
        return min(later) if later else None
