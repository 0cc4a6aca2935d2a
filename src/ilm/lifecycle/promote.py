"""Promotions: bring studies back to the first tier when they are read, or about to be.

Two triggers queue work for one background worker (``ilm serve`` runs it):

- **A read** (``ArchiveService.note_access``) of a study held on a tier with
  ``retrieval_policy = on_read`` (or ``prefetch_priors``, which includes it)
  promotes the study to the first tier. The read itself is never delayed:
  noting it only puts the study UID in the queue.
- **A new study** (the first instance of a study the catalog did not know)
  of a patient whose relevant priors sit on a tier with ``retrieval_policy =
  prefetch_priors`` promotes those priors, so that they are on the first tier
  before a radiologist opens them for comparison.

Every promotion is the journaled safe move of
:func:`ilm.lifecycle.move.move_study` (copy, verify, commit, delete the
source; never the last verified copy), audited as action ``promote``.

Guards, so that a sequential scan (a bulk export, a research pull, a
migration) does not pull the whole archive back up, as FabricPool does not
promote on sequential reads:

- reads through the ``export`` interface never promote;
- at most ``lifecycle.promotions_per_minute`` promotions start in any
  60 seconds; requests beyond that are dropped (counted and logged), not
  postponed, since a burst of reads is a scan, not a radiologist;
- a study arriving with a StudyDate older than ``NEW_STUDY_DAYS`` (an
  import of old studies, a migration) does not prefetch its priors;
- the queue is deduplicated and bounded (``max_queue``); when it is full,
  new requests are dropped.

Requests are queued only while the worker runs (:meth:`Promoter.start`), so
a command-line import does not collect requests nobody will serve.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.tiering import patient_studies, study_place
from ilm.config import Settings
from ilm.lifecycle.move import move_study
from ilm.lifecycle.tiering import tier_roles
from ilm.policy.tiering import Promotion, promotion_check, relevant_priors
from ilm.storage import Tier

__all__ = ["ACTOR", "NEVER_PROMOTE", "NEW_STUDY_DAYS", "Promoter", "PromotionStats"]

log = logging.getLogger("ilm.promote")

NEVER_PROMOTE = frozenset({"export"})   # interfaces whose reads never promote
NEW_STUDY_DAYS = 30                     # a study dated earlier than this does not prefetch
ACTOR = "ilm-promoter"
_ARRIVAL_WINDOW = timedelta(hours=1)    # a study received longer ago than this is not new


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass
class PromotionStats:
    promoted: int = 0          # studies moved up
    bytes_moved: int = 0
    not_needed: int = 0        # already on the first tier, or its tier does not promote
    capped: int = 0            # dropped by the per-minute cap
    dropped: int = 0           # dropped because the queue was full
    failed: int = 0
    arrivals: int = 0          # new studies whose priors were looked at
    recent: list[str] = field(default_factory=list)   # the last few promoted study UIDs


@dataclass(frozen=True, slots=True)
class _Job:
    kind: Literal["read", "arrival"]
    study_uid: str
    queued_at: datetime
    interface: str = ""
    who: str = ""


class Promoter:
    """The promotion queue and its worker.

    ``step`` handles one request (the worker's loop; tests call it directly),
    ``drain`` handles all that are waiting.
    """

    def __init__(self, catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier], *,
                 per_minute: int | None = None, max_queue: int = 10_000,
                 clock: Callable[[], datetime] = _now) -> None:
        self._catalog = catalog
        self._settings = settings
        self._tiers = tiers
        self._roles = tier_roles(settings)
        self._clock = clock
        self.per_minute = per_minute if per_minute is not None else settings.lifecycle.promotions_per_minute
        self.max_queue = max_queue
        others = self._roles[1:]
        self.promotes_on_read = any(r.retrieval_policy in ("on_read", "prefetch_priors") for r in others)
        self.prefetches = any(r.retrieval_policy == "prefetch_priors" for r in others)
        self.stats = PromotionStats()
        self._queue: OrderedDict[tuple[str, str], _Job] = OrderedDict()
        self._cond = threading.Condition()
        self._seen: OrderedDict[str, None] = OrderedDict()   # studies whose arrival was queued
        self._started: deque[float] = deque()               # monotonic times of promotions started
        self._accepting = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the hooks (called on the read and ingest paths: cheap, never block) ----

    @property
    def active(self) -> bool:
        return self._accepting and (self.promotes_on_read or self.prefetches)

    def on_read(self, study_uid: str, interface: str, who: str = "") -> None:
        """A retrieval was noted: queue a promotion check of the study."""
        if not self._accepting or not self.promotes_on_read or interface in NEVER_PROMOTE:
            return
        self._put(_Job("read", study_uid, self._clock(), interface, who))

    def on_stored(self, study_uid: str) -> None:
        """An instance was stored: the first time a study is seen, queue a prefetch of its priors."""
        if not self._accepting or not self.prefetches:
            return
        with self._cond:
            if study_uid in self._seen:
                return
            self._seen[study_uid] = None
            while len(self._seen) > self.max_queue:
                self._seen.popitem(last=False)
        self._put(_Job("arrival", study_uid, self._clock()))

    def _put(self, job: _Job) -> None:
        with self._cond:
            key = (job.kind, job.study_uid)
            if key in self._queue:
                return
            if len(self._queue) >= self.max_queue:
                self.stats.dropped += 1
                return
            self._queue[key] = job
            self._cond.notify()

    # -- the worker -------------------------------------------------------------

    def start(self, *, background: bool = True) -> None:
        """Accept requests; with ``background``, also run the worker thread."""
        self._accepting = True
        if background and self._thread is None and (self.promotes_on_read or self.prefetches):
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ilm-promoter", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._accepting = False
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(timeout=1.0)
            except Exception:  # never let one bad request stop the worker
                log.exception("promotion failed")

    def step(self, timeout: float = 0.0) -> bool:
        """Handle the oldest request (waiting up to ``timeout`` for one); False if there was none."""
        with self._cond:
            if not self._queue and timeout > 0 and not self._stop.is_set():
                self._cond.wait(timeout)
            if not self._queue:
                return False
            _key, job = self._queue.popitem(last=False)
        try:
            if job.kind == "read":
                self._handle_read(job)
            else:
                self._handle_arrival(job)
        except Exception as exc:  # noqa: BLE001 - one failed promotion must not stop the worker
            self.stats.failed += 1
            log.error("promotion of %s (%s) failed: %s", job.study_uid, job.kind, exc)
        return True

    def drain(self) -> int:
        """Handle every waiting request now; return how many."""
        n = 0
        while self.step():
            n += 1
        return n

    # -- handlers ---------------------------------------------------------------

    def _handle_read(self, job: _Job) -> None:
        with self._catalog.read() as conn:
            place = study_place(conn, job.study_uid)
        if place is None:
            return
        check = promotion_check(place.tiers, self._roles, "read")
        if not check.promote:
            self.stats.not_needed += 1
            return
        self._promote(job.study_uid, check, {"trigger": "read", "interface": job.interface, "who": job.who[:128]})

    def _handle_arrival(self, job: _Job) -> None:
        with self._catalog.read() as conn:
            found = patient_studies(conn, job.study_uid)
        if found is None:
            return
        new = found.study
        if new.received_at is None or _utc(new.received_at) < job.queued_at - _ARRIVAL_WINDOW:
            return  # more instances of a study received earlier: not a new study
        today = job.queued_at.date()
        if new.study_date is not None and new.study_date < today - timedelta(days=NEW_STUDY_DAYS):
            log.info("study %s is dated %s: an old study arriving, its priors are not prefetched",
                     new.study_uid, new.study_date)
            return
        self.stats.arrivals += 1
        done: set[str] = set()
        for role in self._roles[1:]:
            if role.retrieval_policy != "prefetch_priors":
                continue
            for prior in relevant_priors(new, found.others, role.prefetch, today):
                if prior.study_uid in done or role.name not in prior.tiers:
                    continue
                done.add(prior.study_uid)
                check = promotion_check(prior.tiers, self._roles, "prefetch")
                if not check.promote:
                    self.stats.not_needed += 1
                    continue
                self._promote(prior.study_uid, check, {"trigger": "prefetch", "new_study": new.study_uid,
                                                       "prior_date": _iso(prior.study_date)})

    def _over_cap(self) -> bool:
        if self.per_minute <= 0:
            return False
        now = time.monotonic()
        while self._started and self._started[0] < now - 60:
            self._started.popleft()
        if len(self._started) >= self.per_minute:
            return True
        self._started.append(now)
        return False

    def _promote(self, study_uid: str, check: Promotion, detail: dict[str, object]) -> None:
        if self._over_cap():
            self.stats.capped += 1
            log.info("not promoting %s: more than %d promotions in the last minute (a scan?)",
                     study_uid, self.per_minute)
            return
        r = move_study(self._catalog, self._tiers, study_uid, check.target,
                       workers=self._settings.lifecycle.move_workers)
        body = {**detail, "from": list(check.sources), "to": check.target, "moved": r.moved,
                "bytes": r.bytes_moved, "ok": r.ok}
        if not r.ok:
            body["failed"] = r.failed[:5]
        with self._catalog.write() as conn:
            append_audit(conn, at=_now(), actor=ACTOR, action="promote", study_uid=study_uid, detail=body)
        if r.ok:
            self.stats.promoted += 1
            self.stats.bytes_moved += r.bytes_moved
            self.stats.recent = (self.stats.recent + [study_uid])[-20:]
            log.info("promoted %s to %s (%s, %d instances)", study_uid, check.target, detail["trigger"], r.moved)
        else:
            self.stats.failed += 1
            log.warning("promotion of %s to %s failed: %s", study_uid, check.target, r.failed[0])


def _iso(d: date | None) -> str | None:
    return d.isoformat() if d else None
