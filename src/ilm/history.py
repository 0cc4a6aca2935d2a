"""Storage by tier over time: recording a day's snapshot, backfilling the past once, reading
the history by month (``ilm stats --snapshot``, ``ilm serve`` once a day, after each apply and
folder import; docs/cost.md).

A snapshot reads the catalog on a read connection (one grouped pass over the
studies, one over those received since the last recorded day) and writes its
few rows in a short transaction. The first snapshot of a catalog also writes
the past as the catalog knows it (:mod:`ilm.cost.history`), marked reconstructed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable

from ilm.catalog import Catalog
from ilm.catalog import history as h
from ilm.cost.history import month_end, monthly, reconstruct

__all__ = ["Snapshot", "record_snapshot", "read_history", "DailySnapshots", "CHECK_SECONDS"]

log = logging.getLogger("ilm.history")
CHECK_SECONDS = 3600.0  # ilm serve looks this often whether today's snapshot is taken


@dataclass(frozen=True)
class Snapshot:
    day: date
    tiers: list[h.TierCount]
    received_days: int            # days whose arrivals were (re)counted
    backfilled_months: int = 0    # months reconstructed (first snapshot only)
    backfilled_days: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(),
                "tiers": {t.tier: {"studies": t.studies, "instances": t.instances, "bytes": t.size_bytes}
                          for t in self.tiers},
                "received_days": self.received_days, "backfilled_months": self.backfilled_months,
                "backfilled_days": self.backfilled_days}


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), tzinfo=timezone.utc)


def record_snapshot(catalog: Catalog, now: datetime) -> Snapshot:
    """Today's (UTC) studies, instances and bytes per tier, and the arrivals of every day since
    the last recorded one; on a catalog without history, the past reconstructed first."""
    today = now.astimezone(timezone.utc).date()
    past_days: list[h.DayCount] = []
    past: dict[str, dict[str, list[int]]] = {}
    with catalog.read() as conn:
        first = not h.has_history(conn)
        last = h.last_recorded_day(conn)
        counts = h.stored_by_tier(conn)
        since = last if last is not None and last <= today else today
        days = [d for d in h.received_by_day(conn, _midnight(since)) if d.day <= today]
        if first:
            past_days = [replace(d, reconstructed=True) for d in h.received_by_day(conn) if d.day < today]
            previous = (today.replace(day=1) - timedelta(days=1)).isoformat()[:7]
            past = reconstruct(h.study_spans(conn), h.move_spans(conn), previous)
    with catalog.write() as conn:
        if first and not h.has_history(conn):  # another snapshot may have backfilled meanwhile
            h.write_received(conn, past_days, now)
            for month, tiers in past.items():
                h.write_tiers(conn, month_end(month), [h.TierCount(t, *c) for t, c in tiers.items()], now,
                              reconstructed=True)
        else:
            first = False
        h.write_tiers(conn, today, counts, now)
        # every day since the last recorded one: a day without arrivals gets its zero row
        seen = {d.day for d in days}
        zeros = [h.DayCount(since + timedelta(days=k), 0, 0, 0) for k in range((today - since).days + 1)
                 if since + timedelta(days=k) not in seen]
        h.write_received(conn, sorted(days + zeros, key=lambda d: d.day), now)
    return Snapshot(today, counts, len(days) + len(zeros), len(past) if first else 0,
                    len(past_days) if first else 0)


def read_history(catalog: Catalog, since: date | None = None) -> list[dict[str, Any]]:
    """By month: the tiers at the month's last snapshot, what arrived, whether reconstructed."""
    with catalog.read() as conn:
        return monthly(h.tier_rows(conn, since), h.received_rows(conn, since))


class DailySnapshots:
    """``ilm serve``'s recorder: a snapshot at start and whenever the UTC day has changed since
    the last one (checked every ``CHECK_SECONDS``), on a thread of its own."""

    def __init__(self, record: Callable[[], Snapshot], stop: threading.Event, *,
                 check_seconds: float = CHECK_SECONDS) -> None:
        self._record, self._stop, self._every = record, stop, check_seconds
        self.last: date | None = None
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            today = datetime.now(timezone.utc).date()
            if self.last != today:
                try:
                    self.last = self._record().day
                except Exception as exc:  # the next check tries again
                    log.warning("storage by tier: snapshot not recorded: %s", exc)
            self._stop.wait(self._every)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._loop, name="ilm-tier-history", daemon=True)
        self._thread.start()
        return self._thread
