"""DICOM Age String (AS) values: ``045Y``, ``006M``, ``010W``, ``003D``.

PS3.5 defines AS as exactly four characters, three digits and a unit (D, W,
M or Y). Real files carry variants: missing zero padding (``45Y``), lower-case
units, surrounding spaces, a missing unit. Padding, case and spaces are
tolerated; a missing unit, a unit other than D/W/M/Y, a sign, a decimal or an
age of 150 years or more is refused, because a guessed age could release a
child's study from pediatric retention.

An age counts completed units, so ``045Y`` at a study on day S means the
patient was born after S - 46 years and on or before S - 45 years:
:meth:`PatientAge.birth_bounds` returns that interval, which is what
evaluation uses when the birth date itself is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

from ilm.policy.durations import Period

__all__ = ["PatientAge", "AgeError", "parse_age"]

_AS = re.compile(r"(\d{1,3})([DWMY])")
_MAX_YEARS = 150


class AgeError(ValueError):
    """A PatientAge value that cannot be trusted."""


@dataclass(frozen=True, slots=True)
class PatientAge:
    """An age as DICOM writes it: a count of completed days, weeks, months or years."""

    value: int
    unit: str  # one of "D", "W", "M", "Y"

    def period(self, extra: int = 0) -> Period:
        """The age (plus ``extra`` units) as a calendar period."""
        n = self.value + extra
        if self.unit == "Y":
            return Period(years=n)
        if self.unit == "M":
            return Period(months=n)
        if self.unit == "W":
            return Period(days=7 * n)
        return Period(days=n)

    def birth_bounds(self, at: date) -> tuple[date, date]:
        """Earliest and latest possible birth dates of a patient of this age on ``at``."""
        latest = self.period().subtract_from(at)
        earliest = self.period(extra=1).subtract_from(at) + timedelta(days=1)
        return min(earliest, latest), latest

    def __str__(self) -> str:
        return f"{self.value:03d}{self.unit}"


def parse_age(raw: str) -> PatientAge:
    """Parse a PatientAge value; raise AgeError with the reason if it is odd."""
    text = raw.strip().upper()
    if not text:
        raise AgeError("PatientAge is empty")
    m = _AS.fullmatch(text)
    if not m:
        raise AgeError(f"PatientAge {raw!r} is not an age string like 045Y, 006M, 010W or 003D")
    age = PatientAge(int(m.group(1)), m.group(2))
    if age.unit == "Y" and age.value >= _MAX_YEARS:
        raise AgeError(f"PatientAge {raw!r} is not a plausible age")
    return age
