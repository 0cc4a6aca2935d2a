"""The archive at a glance (the dashboard's overview), kept fresh in the background.

Counting a million studies by tier, modality and month takes the catalog a
second or more; a page that people leave open and reload must not pay that
on every request. ``Overview`` computes the figures once, serves them while
they are younger than ``max_age`` seconds, and when they are older serves the
last figures at once while one background thread computes new ones
(stale-while-revalidate, as HTTP caches do). The figures carry the moment
they were computed, and the page shows it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

log = logging.getLogger("ilm.overview")

__all__ = ["Figures", "Overview"]


@dataclass(frozen=True, slots=True)
class Figures:
    computed_at: datetime
    seconds: float          # how long computing them took
    data: dict[str, Any]


class Overview:
    def __init__(self, compute: Callable[[], dict[str, Any]], *, max_age: float = 60.0) -> None:
        self._compute = compute
        self.max_age = max_age
        self._lock = threading.Lock()
        self._figures: Figures | None = None
        self._at = 0.0                     # monotonic time of the figures
        self._refreshing = False

    def _run(self) -> Figures:
        t0 = time.monotonic()
        data = self._compute()
        figures = Figures(datetime.now(timezone.utc), time.monotonic() - t0, data)
        with self._lock:
            self._figures, self._at = figures, t0
        return figures

    def _refresh_in_background(self) -> None:
        def run() -> None:
            try:
                self._run()
            except Exception as exc:  # the old figures stay; the next request tries again
                log.warning("overview figures could not be refreshed: %s", exc)
            finally:
                with self._lock:
                    self._refreshing = False

        threading.Thread(target=run, name="ilm-overview", daemon=True).start()

    def get(self) -> Figures:
        """The figures: fresh ones, or the last ones while new ones are computed."""
        with self._lock:
            figures, age = self._figures, time.monotonic() - self._at
            stale = figures is not None and age > self.max_age
            if stale and not self._refreshing:
                self._refreshing = True
                start = True
            else:
                start = False
        if figures is None:
            return self._run()  # the very first request computes them
        if start:
            self._refresh_in_background()
        return figures

    def invalidate(self) -> None:
        """Forget the figures (the next request computes new ones)."""
        with self._lock:
            self._figures = None
