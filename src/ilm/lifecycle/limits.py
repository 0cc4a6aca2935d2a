"""Pacing for data-moving work: a byte-rate limit and a maintenance window.

Pure logic plus a sleep hook, so tests can drive time.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from datetime import time as dtime

__all__ = ["RateLimiter", "MaintenanceWindow", "parse_window"]


class RateLimiter:
    """Token bucket over bytes: ``take(n)`` blocks until n bytes may pass.

    ``mb_per_s`` of 0 or less means unlimited. Thread-safe.
    """

    def __init__(self, mb_per_s: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = mb_per_s * 1_000_000
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = clock()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(self._next, now)
            self._next = start + n / self.rate
            wait = start - now
        if wait > 0:
            self._sleep(wait)


_WINDOW = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """Daily window in local time, e.g. 22:00-06:00 (may wrap past midnight)."""

    start: dtime
    end: dtime

    def contains(self, at: datetime) -> bool:
        t = at.time()
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> MaintenanceWindow:
    m = _WINDOW.fullmatch(text.strip())
    if not m:
        raise ValueError(f"maintenance window {text!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"maintenance window {text!r} has an invalid time")
    if (h1, m1) == (h2, m2):
        raise ValueError(f"maintenance window {text!r} is empty")
    return MaintenanceWindow(dtime(h1, m1), dtime(h2, m2))
