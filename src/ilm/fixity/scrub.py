"""The continuous scrub of ``ilm serve``: re-check every copy on the online
tiers at most every ``fixity.scrub_interval_days``, the ones checked longest
ago first, reading at ``fixity.scrub_mb_per_s`` so that ingest and retrieval
keep the disks. Bad and missing copies are marked, audited and repaired as
``ilm verify`` does (``ilm.fixity.verify``). A status line goes to the log
every ``STATUS_EVERY_SECONDS`` while it works, and ``status()`` gives the
progress to the service (and so to the REST API and dashboard).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from ilm.catalog import Catalog
from ilm.config import Settings
from ilm.errors import IlmError
from ilm.fixity.verify import UNREADABLE, VerifyReport, verify
from ilm.lifecycle.limits import RateLimiter
from ilm.storage import Tier

__all__ = ["Scrubber", "ScrubProgress", "FixityStatus", "fixity_status"]

log = logging.getLogger("ilm.fixity")

BATCH = 128                 # copies per step
IDLE_SECONDS = 60.0         # nothing due: look again after this long
STATUS_EVERY_SECONDS = 60.0
REST_SECONDS = 600.0        # a tier found unreachable is left out this long


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class ScrubProgress:
    """What the scrub has done since ilm serve started."""

    running: bool = False
    mb_per_s: float = 0.0
    interval_days: int = 0
    checked: int = 0
    bytes: int = 0
    ok: int = 0
    bad: int = 0
    missing: int = 0
    unreadable: int = 0
    repaired: int = 0
    replicated: int = 0
    last_check_at: datetime | None = None
    idle_since: datetime | None = None     # every copy checked within the interval
    last_error: str = ""


class Scrubber:
    """A background thread; ``step()`` is one batch (tests call it directly)."""

    def __init__(self, catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier],
                 clock: Callable[[], datetime] = _now) -> None:
        self._catalog = catalog
        self._settings = settings
        self._tiers = tiers
        self._clock = clock
        f = settings.fixity
        self._limiter = RateLimiter(f.scrub_mb_per_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._progress = ScrubProgress(mb_per_s=f.scrub_mb_per_s, interval_days=f.scrub_interval_days)
        self._resting: dict[str, float] = {}  # tier -> monotonic time until which it is left out (unreachable)

    @property
    def enabled(self) -> bool:
        return self._settings.fixity.scrub_mb_per_s > 0

    def status(self) -> ScrubProgress:
        with self._lock:
            return replace(self._progress, running=self._thread is not None and self._thread.is_alive())

    def step(self) -> VerifyReport:
        """Check the next batch of copies due; an empty report when none is due."""
        due = self._clock() - timedelta(days=self._settings.fixity.scrub_interval_days)
        now = time.monotonic()
        among = [n for n in self._settings.tiers if self._resting.get(n, 0.0) <= now]
        r = verify(self._catalog, self._settings, self._tiers, among=among, checked_before=due, limit=BATCH,
                   limiter=self._limiter, replicate=False, actor="ilm-scrub")
        for problem in r.problems:  # an unreachable tier rests, so that the others are still scrubbed
            if problem.state == UNREADABLE:
                self._resting[problem.tier] = now + REST_SECONDS
        with self._lock:
            p = self._progress
            self._progress = replace(
                p, checked=p.checked + r.objects, bytes=p.bytes + r.bytes, ok=p.ok + r.ok, bad=p.bad + r.bad,
                missing=p.missing + r.missing, unreadable=p.unreadable + r.unreadable,
                repaired=p.repaired + r.repaired,
                last_check_at=self._clock() if r.objects else p.last_check_at,
                idle_since=None if r.objects else (p.idle_since or self._clock()))
        return r

    def _fill_replicas(self) -> None:
        from ilm.fixity.replicas import Replicator

        written = Replicator(self._settings, self._catalog, self._tiers).fill().written
        if written:
            with self._lock:
                self._progress = replace(self._progress, replicated=self._progress.replicated + written)

    def _loop(self) -> None:
        last_line = 0.0
        while not self._stop.is_set():
            try:
                r = self.step()
                if not r.objects:
                    self._fill_replicas()
            except (IlmError, OSError, Exception) as exc:  # keep scrubbing; say why a step failed
                log.warning("scrub: step failed: %s", exc)
                with self._lock:
                    self._progress = replace(self._progress, last_error=str(exc)[:500])
                self._stop.wait(IDLE_SECONDS)
                continue
            if time.monotonic() - last_line >= STATUS_EVERY_SECONDS or (r.remaining and r.objects):
                last_line = time.monotonic()
                s = self.status()
                log.info("scrub: %d copies checked (%.1f MB) since start, %d ok, %d bad, %d missing, %d repaired%s",
                         s.checked, s.bytes / 1e6, s.ok, s.bad, s.missing, s.repaired,
                         "; every copy checked within the interval" if s.idle_since else "")
            if not r.objects:  # nothing due: look again later
                self._stop.wait(IDLE_SECONDS)

    def start(self) -> bool:
        """Start the thread (False when the scrub is off: scrub_mb_per_s = 0)."""
        if not self.enabled or self._thread is not None:
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ilm-scrub", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


@dataclass(frozen=True, slots=True)
class FixityStatus:
    """Copies on the online tiers by fixity state, how many are due for a check,
    and the scrub's progress."""

    verified: int
    bad: int
    missing: int
    due: int
    scrub: ScrubProgress


def fixity_status(catalog: Catalog, settings: Settings, scrub: Scrubber, now: datetime) -> FixityStatus:
    from ilm.catalog.fixity import fixity_counts

    online = [n for n, t in settings.tiers.items() if not t.archive]
    with catalog.read() as conn:
        n = fixity_counts(conn, tiers=online, checked_before=now - timedelta(days=settings.fixity.scrub_interval_days))
    return FixityStatus(verified=n["verified"], bad=n["bad"], missing=n["missing"], due=n["due"], scrub=scrub.status())
