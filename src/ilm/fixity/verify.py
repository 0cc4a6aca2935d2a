"""Checking copies: read, hash, compare with the catalog, mark, repair.

Each copy is read whole from its tier (an instance inside a packed study: its
byte range) and its SHA-256 compared with the catalog's (``locations.sha256``).
Reads run in threads (hashlib releases the GIL) behind a byte-rate limit, so
a scrub does not starve ingest.

What a check finds:
- the object is gone: the copy is marked 'missing';
- other bytes (or another size, or the tier's own checksum refuses them): 'bad';
- the tier cannot be reached: nothing is marked (a tier being down is not a
  lost object); counted as unreadable, and the run fails.

A marked copy is never served again (reads use VERIFIED copies only). It is
repaired from another verified copy when one exists: the source is read and
checked first, then the bad object is replaced through the move's copy step
(``ilm.lifecycle.move.put_verified``: put with the catalog's SHA-256, check what
the tier holds) and the copy is marked verified. Without a source the copy is
kept as it is (never deleted: the last copy, even a bad one, is evidence) and
reported. The copy's row is the journal: a crash at any point leaves it
marked, and the next run repairs it again. A copy inside a packed study
object is repaired by writing a new pack of the study (``ilm.fixity.repack``,
journaled like a pack move), once per pack and run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ilm.catalog import Catalog
from ilm.catalog.audit import append_audit
from ilm.catalog.copies import InstanceCopy
from ilm.catalog.fixity import (
    CheckedCopy, CopyToCheck, candidate_ids, candidate_page, candidate_totals, copies_by_ids, mark_repaired,
    marked_copies, record_checks, repair_sources,
)
from ilm.config import Settings
from ilm.errors import ConfigError, IlmError, IntegrityError, ObjectNotFound, StorageError, TierUnavailable
from ilm.fixity.repack import RepackResult, repair_pack
from ilm.fixity.replicas import Replicator
from ilm.lifecycle.limits import RateLimiter
from ilm.lifecycle.move import put_verified
from ilm.models import CopyState
from ilm.storage import Tier

__all__ = ["CopyProblem", "VerifyReport", "verify", "sample_ids", "UNREADABLE", "replace_copy", "repair_from_resend"]

log = logging.getLogger("ilm.fixity")

BATCH = 256
UNREADABLE = "unreadable"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class CopyProblem:
    """A copy that is bad, missing or could not be read, and what became of it."""

    tier: str
    key: str
    sop_uid: str
    study_uid: str
    state: str          # bad | missing | unreadable
    why: str
    repaired_from: str | None = None   # the tier the good bytes came from
    kept_because: str = ""             # why it was not repaired


@dataclass
class VerifyReport:
    """Counts of one verify run (or one scrub batch)."""

    tiers: list[str] = field(default_factory=list)
    candidates: int = 0      # copies the selection covered before sampling
    objects: int = 0         # copies checked
    bytes: int = 0
    ok: int = 0
    bad: int = 0
    missing: int = 0
    unreadable: int = 0
    repaired: int = 0
    replicated: int = 0
    skipped_archive: dict[str, int] = field(default_factory=dict)
    problems: list[CopyProblem] = field(default_factory=list)
    replica_problems: list[str] = field(default_factory=list)  # replicas that could not be written

    @property
    def remaining(self) -> int:
        """Bad, missing or unreadable copies still not good after this run."""
        return self.bad + self.missing + self.unreadable - self.repaired

    @property
    def clean(self) -> bool:
        return self.remaining == 0

    def add(self, other: "VerifyReport") -> None:
        for name in ("candidates", "objects", "bytes", "ok", "bad", "missing", "unreadable", "repaired", "replicated"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.problems += other.problems


def sample_ids(ids: Sequence[tuple[int, int]], percent: float, seed: int | None) -> list[tuple[int, int]]:
    """``percent`` of ``ids`` (rounded up, so a small selection is never sampled to
    nothing), chosen at random; the same ``seed`` chooses the same copies. The
    order of ``ids`` (checked longest ago first) is kept."""
    if percent >= 100 or not ids:
        return list(ids)
    k = min(len(ids), math.ceil(len(ids) * percent / 100))
    chosen = set(random.Random(seed).sample(range(len(ids)), k))
    return [x for i, x in enumerate(ids) if i in chosen]


def _check(c: CopyToCheck, tier: Tier, limiter: RateLimiter) -> CheckedCopy:
    limiter.take(c.size)
    where = f"tier {c.tier!r}: {c.key}" + (f" bytes {c.pack_offset}+{c.pack_length}" if c.pack_offset is not None else "")
    try:
        if c.pack_offset is not None and c.pack_length is not None:
            data = tier.get_range(c.key, c.pack_offset, c.pack_length)
        else:
            data = tier.get(c.key)
    except ObjectNotFound:
        return CheckedCopy(c, CopyState.MISSING.value, f"{where}: the object is gone")
    except IntegrityError as exc:
        return CheckedCopy(c, CopyState.BAD.value, str(exc))
    except TierUnavailable as exc:
        return CheckedCopy(c, UNREADABLE, str(exc))
    except StorageError as exc:
        if c.pack_offset is not None and "beyond the end" in str(exc):  # a truncated pack
            return CheckedCopy(c, CopyState.BAD.value, str(exc))
        return CheckedCopy(c, UNREADABLE, str(exc))
    if len(data) != c.size:
        return CheckedCopy(c, CopyState.BAD.value, f"{where}: {len(data)} bytes, the catalog says {c.size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != c.sha256:
        return CheckedCopy(c, CopyState.BAD.value,
                           f"{where}: SHA-256 {digest[:16]}... differs from the catalog's {c.sha256[:16]}...")
    return CheckedCopy(c, CopyState.VERIFIED.value)


class _Run:
    def __init__(self, catalog: Catalog, settings: Settings, tiers: Callable[[str], Tier], *, actor: str,
                 limiter: RateLimiter, workers: int, repair: bool) -> None:
        self.catalog = catalog
        self.settings = settings
        self.tiers = tiers
        self.actor = actor
        self.limiter = limiter
        self.workers = workers
        self.repair = repair
        self.online = [n for n, t in settings.tiers.items() if not t.archive]
        self._empty: dict[str, bool] = {}  # tier -> holds no object at all (checked once per run)
        self._repacked: dict[tuple[str, str], RepackResult | str] = {}  # (tier, pack) -> its repair, or why it failed

    def _holds_nothing(self, name: str) -> bool:
        """A tier with copies in the catalog but no object at all is not a tier that
        lost them all: more likely an unmounted volume or another bucket. Fail closed."""
        if name not in self._empty:
            try:
                self._empty[name] = next(iter(self.tiers(name).keys()), None) is None
            except (StorageError, IlmError):
                self._empty[name] = True
        return self._empty[name]

    def batch(self, ids: list[int], report: VerifyReport, progress: Callable[[int, int], None] | None,
              pool: ThreadPoolExecutor) -> None:
        with self.catalog.read() as conn:
            copies = copies_by_ids(conn, ids)
        futures = [pool.submit(lambda c=c: _check(c, self.tiers(c.tier), self.limiter))  # type: ignore[misc]
                   for c in copies]
        checked: list[CheckedCopy] = []
        for c, fut in zip(copies, futures):
            try:
                r = fut.result()
            except (StorageError, IlmError) as exc:  # the tier could not even be opened
                r = CheckedCopy(c, UNREADABLE, str(exc))
            if r.state == CopyState.MISSING.value and self._holds_nothing(c.tier):
                r = CheckedCopy(c, UNREADABLE, f"tier {c.tier!r} holds no object at all (not mounted? another "
                                               "bucket?): nothing is marked missing")
            checked.append(r)
            report.objects += 1
            report.bytes += c.size
            if progress:
                progress(1, c.size)
        now = _now()
        with self.catalog.write() as conn:
            newly = record_checks(conn, [r for r in checked if r.state != UNREADABLE], now)
            for r in newly:  # fixity.bad, fixity.missing, or fixity.verified (a marked copy good again)
                append_audit(conn, at=now, actor=self.actor, action=f"fixity.{r.state}", study_uid=r.copy.study_uid,
                             detail={"tier": r.copy.tier, "key": r.copy.key, "sop_uid": r.copy.sop_uid,
                                     "why": r.problem or f"was {r.copy.state}, its bytes match the catalog again"})
        for r in checked:
            if r.state == CopyState.VERIFIED.value:
                report.ok += 1
                continue
            if r.state == UNREADABLE:
                report.unreadable += 1
                log.warning("fixity: could not read %s:%s (%s): %s", r.copy.tier, r.copy.key, r.copy.sop_uid, r.problem)
                report.problems.append(CopyProblem(r.copy.tier, r.copy.key, r.copy.sop_uid, r.copy.study_uid,
                                                   UNREADABLE, r.problem, kept_because="not marked: the tier could not be read"))
                continue
            report.bad += r.state == CopyState.BAD.value
            report.missing += r.state == CopyState.MISSING.value
            log.warning("fixity: %s copy of %s (study %s): %s", r.state, r.copy.sop_uid, r.copy.study_uid, r.problem)
            source, why = self._repair(r) if self.repair else (None, "repair not asked for (--no-repair)")
            if source is not None:
                report.repaired += 1
            report.problems.append(CopyProblem(r.copy.tier, r.copy.key, r.copy.sop_uid, r.copy.study_uid, r.state,
                                               r.problem, repaired_from=source, kept_because=why))

    def _repair(self, r: CheckedCopy) -> tuple[str | None, str]:
        """(the tier repaired from, '') or (None, why the copy is kept as it is)."""
        c = r.copy
        if c.pack_offset is not None:
            return self._repair_packed(c)
        with self.catalog.read() as conn:
            sources = repair_sources(conn, c.instance_pk, excluding_tier=c.tier, online=self.online)
        if not sources:
            return None, "no other verified copy to repair from: kept as it is, never deleted (the last copy)"
        order = {n: i for i, n in enumerate(self.settings.tiers)}
        problems = []
        for s in sorted(sources, key=lambda s: order.get(s.tier, len(order))):
            try:
                data = self.tiers(s.tier).get(s.key)
                if len(data) != c.size or hashlib.sha256(data).hexdigest() != c.sha256:
                    problems.append(f"{s.tier}: its bytes do not match the catalog either")
                    continue
                replace_copy(self.catalog, self.tiers, c, r.state, data, source=s.tier, actor=self.actor)
            except (StorageError, IlmError) as exc:
                problems.append(f"{s.tier}: {exc}")
                continue
            return s.tier, ""
        return None, "repair failed: " + "; ".join(problems)


    def _repair_packed(self, c: CopyToCheck) -> tuple[str | None, str]:
        """A member of a pack: the pack is rewritten once per run, for every bad member at once."""
        done = self._repacked.get((c.tier, c.key))
        if done is None:
            try:
                done = repair_pack(self.catalog, self.tiers, c.tier, c.key, online=self.online,
                                   tier_order=list(self.settings.tiers), actor=self.actor)
                for p in done.problems:
                    log.warning("fixity: %s", p)
            except (StorageError, IlmError) as exc:
                done = f"repair failed: the pack could not be rewritten: {exc}"
            self._repacked[(c.tier, c.key)] = done
        if isinstance(done, str):
            return None, done
        source = done.repaired.get(c.location_id)
        if source is not None:
            return source, ""
        return None, done.kept.get(c.location_id, "not repaired: its pack was rewritten without it")


def replace_copy(catalog: Catalog, tiers: Callable[[str], Tier], c: CopyToCheck, state: str, data: bytes, *,
                 source: str, actor: str) -> None:
    """Put ``data`` (checked by the caller against the catalog) in place of copy
    ``c``, found ``state`` (bad or missing), with the move's copy step, then mark
    it verified and audit the repair. A bad object is removed only now that good
    bytes are in hand."""
    dst = tiers(c.tier)
    if state == CopyState.BAD.value:
        dst.delete(c.key)
    put_verified(InstanceCopy(c.instance_pk, c.sop_uid, c.sha256, c.size, c.tier, c.key, c.state), data, source, dst)
    now = _now()
    with catalog.write() as conn:
        mark_repaired(conn, c.location_id, c.instance_pk, now)
        append_audit(conn, at=now, actor=actor, action="fixity.repair", study_uid=c.study_uid,
                     detail={"tier": c.tier, "key": c.key, "sop_uid": c.sop_uid, "from": source, "was": state})
    log.info("fixity: repaired %s:%s (%s) from %s", c.tier, c.key, c.sop_uid, source)


def repair_from_resend(catalog: Catalog, tiers: Callable[[str], Tier], sop_uid: str, data: bytes, sha256: str,
                       source: str) -> int:
    """An instance was received again with the very bytes the catalog knows:
    repair its copies marked bad or missing with them (whole-object copies on
    online tiers). Returns how many were repaired; failures are logged only
    (the re-send itself succeeded as a duplicate)."""
    with catalog.read() as conn:
        marked = marked_copies(conn, sop_uid)
    done = 0
    for c in marked:
        if c.sha256 != sha256 or c.size != len(data):
            continue
        try:
            replace_copy(catalog, tiers, c, c.state, data, source=f"a re-send ({source})", actor="ilm-ingest")
            done += 1
        except (StorageError, IlmError) as exc:
            log.warning("fixity: %s:%s not repaired from a re-send: %s", c.tier, c.key, exc)
    return done


def verify(
    catalog: Catalog,
    settings: Settings,
    tiers: Callable[[str], Tier],
    *,
    tier: str | None = None,
    among: Sequence[str] | None = None,
    study_uid: str | None = None,
    sample_percent: float = 100.0,
    seed: int | None = None,
    include_archive: bool = False,
    checked_before: datetime | None = None,
    limit: int | None = None,
    limiter: RateLimiter | None = None,
    workers: int | None = None,
    repair: bool = True,
    replicate: bool = True,
    actor: str = "ilm-verify",
    on_start: Callable[[int, int], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check the copies on ``tier`` (default: every online tier; archive tiers only
    when named or with ``include_archive``), of one study or all, a sample of
    ``sample_percent`` percent, those checked longest ago first; mark, audit and
    repair what is bad or missing; write missing replica copies.

    ``on_start(copies, bytes)`` is called once the selection is known,
    ``progress(copies, bytes)`` after each copy. ConfigError for an unknown tier
    or a percentage outside (0, 100].
    """
    if not 0 < sample_percent <= 100:
        raise ConfigError(f"--sample {sample_percent:g}: a percentage above 0 and at most 100")
    if tier is not None and tier not in settings.tiers:
        raise ConfigError(f"no tier named {tier!r} (tiers: {', '.join(settings.tiers)})")
    report = VerifyReport()
    if tier is not None:
        report.tiers = [tier]
    else:
        report.tiers = [n for n, t in settings.tiers.items() if include_archive or not t.archive]
        if among is not None:  # the scrub leaves out a tier it found unreachable, for a while
            report.tiers = [n for n in report.tiers if n in among]
        skipped = [n for n in settings.tiers if n not in report.tiers]
        if skipped:
            with catalog.read() as conn:
                for n in skipped:
                    report.skipped_archive[n] = candidate_totals(conn, tiers=[n], study_uid=study_uid)[0]
    run = _Run(catalog, settings, tiers, actor=actor, limiter=limiter or RateLimiter(settings.fixity.verify_mb_per_s),
               workers=workers or settings.fixity.workers, repair=repair)
    where = dict(tiers=report.tiers, study_uid=study_uid, checked_before=checked_before)
    with ThreadPoolExecutor(max_workers=run.workers) as pool:
        if sample_percent >= 100 and limit is None:  # every copy: page through by id
            with catalog.read() as conn:
                report.candidates, total = candidate_totals(conn, **where)  # type: ignore[arg-type]
            if on_start:
                on_start(report.candidates, total)
            after = 0
            while True:
                with catalog.read() as conn:
                    page = candidate_page(conn, after_id=after, limit=BATCH, **where)  # type: ignore[arg-type]
                if not page:
                    break
                run.batch(page, report, progress, pool)
                after = page[-1]
        else:  # a sample, or the copies checked longest ago (the scrub)
            with catalog.read() as conn:
                ids = candidate_ids(conn, limit=limit, **where)  # type: ignore[arg-type]
            report.candidates = len(ids)
            ids = sample_ids(ids, sample_percent, seed)
            if on_start:
                on_start(len(ids), sum(size for _i, size in ids))
            for i in range(0, len(ids), BATCH):
                run.batch([x for x, _s in ids[i:i + BATCH]], report, progress, pool)
    if replicate:
        filled = Replicator(settings, catalog, tiers).fill(study_uid=study_uid, tiers=set(report.tiers))
        report.replicated = filled.written
        report.replica_problems = filled.problems
        for p in filled.problems:
            log.warning("fixity: %s", p)
    return report
