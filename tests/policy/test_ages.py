"""DICOM Age Strings: parsing, odd values, the birth-date range they imply."""

from __future__ import annotations

from datetime import date

import pytest

from ilm.policy.ages import AgeError, PatientAge, parse_age


@pytest.mark.parametrize(
    "raw, value, unit",
    [
        ("045Y", 45, "Y"),
        ("006M", 6, "M"),
        ("010W", 10, "W"),
        ("003D", 3, "D"),
        ("000D", 0, "D"),     # a newborn
        ("45Y", 45, "Y"),     # missing zero padding, seen in real files
        ("045y", 45, "Y"),    # lower-case unit
        (" 045Y ", 45, "Y"),  # padding spaces (DICOM pads to even length)
        ("149Y", 149, "Y"),
    ],
    ids=repr,
)
def test_parse(raw: str, value: int, unit: str) -> None:
    assert parse_age(raw) == PatientAge(value, unit)


@pytest.mark.parametrize(
    "raw",
    ["", "   ", "45", "Y", "045", "045X", "-45Y", "4.5Y", "045 Y", "0045Y", "150Y", "999Y", "abc", "45YY"],
    ids=repr,
)
def test_odd_values_refused(raw: str) -> None:
    with pytest.raises(AgeError):
        parse_age(raw)


@pytest.mark.parametrize(
    "raw, at, earliest, latest",
    [
        # 45 completed years on 2020-06-15: born 1974-06-16 .. 1975-06-15
        ("045Y", date(2020, 6, 15), date(1974, 6, 16), date(1975, 6, 15)),
        # 6 completed months: born 2019-12-16 .. 2020-01-15
        ("006M", date(2020, 7, 15), date(2019, 12, 16), date(2020, 1, 15)),
        # 2 completed weeks: born 2020-05-26 .. 2020-06-01
        ("002W", date(2020, 6, 15), date(2020, 5, 26), date(2020, 6, 1)),
        # days are exact
        ("003D", date(2020, 6, 15), date(2020, 6, 12), date(2020, 6, 12)),
        # one completed year on 2024-02-29: born 2022-03-01 .. 2023-02-28 (Feb 29 clamps)
        ("001Y", date(2024, 2, 29), date(2022, 3, 1), date(2023, 2, 28)),
    ],
    ids=lambda v: str(v),
)
def test_birth_bounds(raw: str, at: date, earliest: date, latest: date) -> None:
    assert parse_age(raw).birth_bounds(at) == (earliest, latest)


def test_str_is_dicom_form() -> None:
    assert str(parse_age("45y")) == "045Y"
