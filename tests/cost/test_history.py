"""Storage by tier over time, the pure part (ilm.cost.history): the past rebuilt from spans and
moves, and the arrivals per month taken from the catalog and its snapshots. Cases by hand."""

from __future__ import annotations

from datetime import date

import pytest

from ilm.cost.history import merged_arrivals, month_end, months_between, reconstruct


@pytest.mark.parametrize("month, end", [("2026-01", date(2026, 1, 31)), ("2024-02", date(2024, 2, 29)),
                                        ("2025-12", date(2025, 12, 31))], ids=["january", "leap-february", "december"])
def test_month_end(month: str, end: date) -> None:
    assert month_end(month) == end


def test_months_between_crosses_a_year() -> None:
    assert months_between("2025-11", "2026-02") == ["2025-11", "2025-12", "2026-01", "2026-02"]


@pytest.mark.parametrize("spans, moved, until, expected", [
    # one study of 10 bytes (2 instances) received in January on hot, never moved
    ([("hot", "2026-01", "", 1, 2, 10)], [], "2026-03",
     {"2026-01": {"hot": [1, 2, 10]}, "2026-02": {"hot": [1, 2, 10]}, "2026-03": {"hot": [1, 2, 10]}}),
    # received in January, now on archive: moved hot -> warm in February, warm -> archive in April
    ([("archive", "2026-01", "", 1, 2, 10)],
     [("hot", "warm", "2026-02", "2026-01", 1, 2, 10), ("warm", "archive", "2026-04", "2026-01", 1, 2, 10)],
     "2026-04",
     {"2026-01": {"hot": [1, 2, 10]}, "2026-02": {"warm": [1, 2, 10]}, "2026-03": {"warm": [1, 2, 10]},
      "2026-04": {"archive": [1, 2, 10]}}),
    # quarantined in March: gone from March's end on
    ([("hot", "2026-01", "2026-03", 1, 2, 10), ("hot", "2026-02", "", 2, 4, 30)], [], "2026-03",
     {"2026-01": {"hot": [1, 2, 10]}, "2026-02": {"hot": [3, 6, 40]}, "2026-03": {"hot": [2, 4, 30]}}),
    # a study in the middle of a move ("hot\warm") counts on the first tier named
    ([("hot\\warm", "2026-01", "", 1, 1, 5)], [], "2026-01", {"2026-01": {"hot": [1, 1, 5]}}),
], ids=["kept", "two-moves", "quarantined", "mid-move"])
def test_reconstruct(spans: list, moved: list, until: str, expected: dict) -> None:
    assert reconstruct(spans, moved, until) == expected


def test_merged_arrivals_take_the_larger_of_each_month() -> None:
    live = [("2026-01", 10, 100), ("2026-02", 5, 50)]
    recorded = {"2026-02": (8, 80), "2026-03": (1, 7), "2026-01": (9, 90)}
    assert merged_arrivals(live, recorded) == [("2026-01", 10, 100), ("2026-02", 8, 80), ("2026-03", 1, 7)]
