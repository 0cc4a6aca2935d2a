"""Periods: ISO-8601 and short forms, calendar arithmetic, Feb 29."""

from __future__ import annotations

from datetime import date

import pytest

from ilm.policy.durations import DurationError, Period, parse_period


@pytest.mark.parametrize(
    "text, expected",
    [
        ("P10Y", Period(years=10)),
        ("P6M", Period(months=6)),
        ("P180D", Period(days=180)),
        ("P2W", Period(days=14)),
        ("P1Y6M", Period(years=1, months=6)),
        ("P1Y2M3W4D", Period(1, 2, 25)),
        ("p10y", Period(years=10)),           # case does not matter
        ("10y", Period(years=10)),
        ("180d", Period(days=180)),
        ("6m", Period(months=6)),              # m is months, never minutes
        ("2w", Period(days=14)),
        ("1y6m", Period(years=1, months=6)),
        (" 30D ", Period(days=30)),
        ("P18M", Period(years=1, months=6)),   # months fold into years
        ("P0D", Period()),
    ],
    ids=lambda v: str(v),
)
def test_parse(text: str, expected: Period) -> None:
    assert parse_period(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("P", "not a period"),
        ("", "not a period"),
        ("10", "no unit"),
        (10, "no unit"),
        ("10 years", "not a period"),
        ("PT12H", "hours"),
        ("P1.5Y", "not a period"),
        ("-P1Y", "not a period"),
        ("P-1Y", "not a period"),
        ("1x", "not a period"),
        (True, "not a period"),
        (None, "not a period"),
    ],
    ids=repr,
)
def test_refused(text: object, fragment: str) -> None:
    with pytest.raises(DurationError, match=fragment):
        parse_period(text)


@pytest.mark.parametrize(
    "start, period, expected",
    [
        (date(2016, 2, 29), Period(years=1), date(2017, 2, 28)),   # no Feb 29: clamp
        (date(2016, 2, 29), Period(years=4), date(2020, 2, 29)),   # leap to leap
        (date(2016, 2, 29), Period(years=1, days=1), date(2017, 3, 1)),  # days after years
        (date(2024, 1, 31), Period(months=1), date(2024, 2, 29)),
        (date(2023, 1, 31), Period(months=1), date(2023, 2, 28)),
        (date(2023, 12, 15), Period(months=1), date(2024, 1, 15)),  # year wraps
        (date(2020, 5, 1), Period(days=14), date(2020, 5, 15)),
        (date(2020, 5, 1), Period(), date(2020, 5, 1)),
        (date(9000, 1, 1), Period(years=5000), date.max),          # "never"
    ],
    ids=lambda v: str(v),
)
def test_add(start: date, period: Period, expected: date) -> None:
    assert period.add_to(start) == expected


def test_subtract_clamps_and_bottoms_out() -> None:
    assert Period(years=1).subtract_from(date(2024, 2, 29)) == date(2023, 2, 28)
    assert Period(months=1).subtract_from(date(2024, 3, 31)) == date(2024, 2, 29)
    assert Period(years=5000).subtract_from(date(2000, 1, 1)) == date.min


def test_iso_text_round_trips() -> None:
    for text in ("P10Y", "P1Y6M", "P180D", "P0D", "P2Y3M4D"):
        assert parse_period(text).iso() == text
    assert str(parse_period("2w")) == "P14D"


def test_negative_period_refused() -> None:
    with pytest.raises(DurationError):
        Period(years=-1)
