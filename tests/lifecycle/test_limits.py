"""Rate limit and maintenance window: pure, driven with a fake clock."""

from __future__ import annotations

from datetime import datetime

import pytest

from ilm.lifecycle.limits import RateLimiter, parse_window


def test_rate_limiter_paces_bytes() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    lim = RateLimiter(1.0, clock=lambda: now[0], sleep=sleep)  # 1 MB/s
    for _ in range(5):
        lim.take(500_000)
    assert now[0] == pytest.approx(2.0)  # 2.5 MB at 1 MB/s: the first 0.5 MB passes at once


def test_unlimited_never_sleeps() -> None:
    lim = RateLimiter(0, sleep=lambda s: pytest.fail("slept"))
    lim.take(10**9)


@pytest.mark.parametrize(
    "window, at, inside",
    [
        ("22:00-06:00", "2026-01-01T23:30", True),   # wraps past midnight: late evening
        ("22:00-06:00", "2026-01-01T05:59", True),   # early morning
        ("22:00-06:00", "2026-01-01T06:00", False),  # end is exclusive
        ("22:00-06:00", "2026-01-01T12:00", False),
        ("01:00-05:00", "2026-01-01T03:00", True),
        ("01:00-05:00", "2026-01-01T00:30", False),
    ],
)
def test_maintenance_window(window: str, at: str, inside: bool) -> None:
    assert parse_window(window).contains(datetime.fromisoformat(at)) is inside


@pytest.mark.parametrize("bad", ["22-06", "25:00-01:00", "10:00-10:00", ""])
def test_bad_window(bad: str) -> None:
    with pytest.raises(ValueError, match="maintenance window"):
        parse_window(bad)
