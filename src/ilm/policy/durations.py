"""Calendar periods: ``P10Y``, ``P1Y6M``, ``P180D``, ``P2W`` or ``10y``, ``6m``, ``180d``, ``2w``.

A period is calendar-aware: a year is a calendar year and a month a calendar
month, not 365 or 30 days, because retention laws count birthdays and
anniversaries. Adding months or years to a day that the target month lacks
clamps to the month's last day (29 February + 1 year = 28 February; 31 January
+ 1 month = 28 or 29 February), like ``dateutil.relativedelta`` and
``java.time.Period``. Days are added after years and months.

Hours, minutes and seconds (``PT12H``) are refused: policies decide on dates.
"""

from __future__ import annotations

import calendar
import functools
import re
from dataclasses import dataclass
from datetime import date, timedelta

__all__ = ["Period", "DurationError", "parse_period"]


class DurationError(ValueError):
    """A text that is not a period; the message says what was expected."""


_ISO = re.compile(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?", re.IGNORECASE)
_SHORT = re.compile(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?", re.IGNORECASE)
_EXPECTED = "expected an ISO-8601 period such as P10Y, P6M, P180D, P2W, P1Y6M or a short form such as 10y, 6m, 180d, 2w"


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """A non-negative span of years, months and days (weeks are kept as days).

    Months are normalised below 12 (``P18M`` equals ``P1Y6M``); days are not
    folded into months, since a month has no fixed number of days.
    """

    years: int = 0
    months: int = 0
    days: int = 0

    def __post_init__(self) -> None:
        if self.years < 0 or self.months < 0 or self.days < 0:
            raise DurationError("a period cannot be negative")
        if self.months >= 12:
            object.__setattr__(self, "years", self.years + self.months // 12)
            object.__setattr__(self, "months", self.months % 12)

    def add_to(self, day: date) -> date:
        """The date ``self`` after ``day``; clamps to the end of a shorter month.

        A result past year 9999 is ``date.max``: "never" for a retention end.
        """
        return _add_to(self, day)

    def subtract_from(self, day: date) -> date:
        """The date ``self`` before ``day``; clamps to the end of a shorter month.

        A result before year 1 is ``date.min``.
        """
        try:
            return _shift_months(day - timedelta(days=self.days), -(self.years * 12 + self.months))
        except OverflowError:
            return date.min

    def iso(self) -> str:
        """The canonical ISO-8601 text, for example ``P1Y6M`` or ``P0D``."""
        return _iso(self)

    def __str__(self) -> str:
        return self.iso()


# A plan asks the same few periods of the same few thousand days, once or more per study: both are
# remembered (values of frozen dataclasses and dates, so the answers never change).
@functools.lru_cache(maxsize=65536)
def _add_to(p: Period, day: date) -> date:
    try:
        return _shift_months(day, p.years * 12 + p.months) + timedelta(days=p.days)
    except OverflowError:
        return date.max


@functools.lru_cache(maxsize=1024)
def _iso(p: Period) -> str:
    parts = [f"{n}{u}" for n, u in ((p.years, "Y"), (p.months, "M"), (p.days, "D")) if n]
    return "P" + ("".join(parts) or "0D")


def _shift_months(day: date, months: int) -> date:
    if months == 0:
        return day
    index = day.year * 12 + (day.month - 1) + months
    year, month0 = divmod(index, 12)
    if year < 1 or year > 9999:
        raise OverflowError(f"{day.isoformat()} shifted by {months} months leaves the calendar")
    month = month0 + 1
    last = calendar.monthrange(year, month)[1]
    return date(year, month, min(day.day, last))


def parse_period(text: object) -> Period:
    """Parse ``text`` as an ISO-8601 or short period; raise DurationError if it is not one."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise DurationError(f"{text!r} is not a period: {_EXPECTED}")
    raw = str(text).strip()
    if isinstance(text, int) or raw.isdigit():
        raise DurationError(f"{raw!r} has no unit: write {raw}d for days or {raw}y for years")
    if raw[:1] in ("P", "p"):
        if "T" in raw.upper():
            raise DurationError(f"{raw!r}: hours, minutes and seconds are not supported; use days or longer")
        m = _ISO.fullmatch(raw)
    else:
        m = _SHORT.fullmatch(raw)
    if not m or not any(m.groups()):
        raise DurationError(f"{raw!r} is not a period: {_EXPECTED}")
    y, mo, w, d = (int(g) if g else 0 for g in m.groups())
    return Period(years=y, months=mo, days=d + 7 * w)
