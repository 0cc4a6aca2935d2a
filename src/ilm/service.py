"""The service layer: every front-end (CLI, DICOM, DICOMweb, REST) calls this.

It holds the settings, the catalog and the tiers, and owns the rules that
must hold whatever the front-end: an instance is acknowledged as stored only
after its bytes are on a tier (atomically, hash-checked) and its row is
committed in the catalog; nothing is overwritten; a bad dataset changes
nothing.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from ilm.catalog import Catalog
from ilm.catalog.queries import archive_summary, find_instance, instance_locations, list_studies, location_exists, study_detail
from ilm.catalog.records import NewCopy, record_conflict, record_instances
from ilm.config import Settings
from ilm.errors import (
    IlmError, IntegrityError, NothingToApply, NotFound, NotReady, ObjectNotFound, RejectedInstance, StorageError,
    TierFull,
)
from ilm.jobs import ApplyJobs, ApplyProgress
from ilm.overview import Figures, Overview
from ilm.models import IngestResult, IngestStatus, InstanceFacts, StudyDetail, StudyFilter, StudySummary, SummaryRow
from ilm.storage import ObjectExists, Tier, open_tier
from ilm.storage.filesystem import CheckedFile, FilesystemTier
from ilm.uids import instance_key, validate_uid
from ilm.spill import Spill
from ilm import audit as audit_chain
from ilm.access import AccessRecorder
from ilm.atna.emitter import AuditEmitter
from ilm.atna.export import ExportReport, export_trail
from ilm.atna.imports import ImportBatch
from ilm.atna import messages as atna_messages
from ilm.fixity.on_read import mark_bad_on_read
from ilm.atna.messages import QueryAudit
from ilm.catalog.access import InstanceRef, instance_refs
from ilm.catalog.analytics import received_by_month
from ilm.catalog.audit import count_audit, read_audit
from ilm.catalog.facts import load_policy_inputs
from ilm.catalog.plans import ActionRow, PlanRow, get_plan, list_plans, plan_action_rows, plan_action_totals
from ilm.catalog.retention import HoldRow, QuarantinedStudy, patient_key, quarantined_studies
from ilm.lifecycle import retention
from ilm.lifecycle.apply import ApplyReport, apply_plan
from ilm.lifecycle.move import RecoveryReport, recover_moves
from ilm.lifecycle import watermark, worm
from ilm.lifecycle.plan import PlanResult, PolicySource, make_plan, read_policy
from ilm.lifecycle.promote import Promoter
from ilm.lifecycle.tiering import TIERING_POLICY, tiering_settings
from ilm.policy import Decision, evaluate, parse_policy
from ilm.catalog.find import find as find_entities, query_attributes
from ilm.errors import CatalogError, InvalidQuery, Unauthenticated
from ilm.lifecycle import restore as restore_flow
from ilm.lifecycle.restore import RestoreReport, RestoreStatus
from ilm.catalog.commitment import verified_sop_classes
from ilm import encryption
from ilm import analytics
from ilm import history as tier_history
from ilm.fixity import VerifyReport, verify as fixity_verify
from ilm.fixity.replicas import Replicator
from ilm.fixity.verify import repair_from_resend
from ilm.fixity.scrub import FixityStatus, Scrubber, fixity_status
from ilm.policy.durations import Period
from ilm.security.roles import Principal
from ilm.security.tokens import TokenRow, TokenStore
from ilm.catalog.queries import ping as ping_catalog, tier_usage
from ilm import health
from ilm.lifecycle.apply import PlanChanged
from ilm.lifecycle.plan_compare import compare_decisions, export_plan, peer_decisions
from ilm.metrics import ArchiveMetrics, CatalogSnapshot, PromotionCounts

if TYPE_CHECKING:  # pydicom (and numpy with it) is imported on first use: ilm plan, ilm cost ... never read DICOM
    from ilm import study_export
    from pydicom.dataset import Dataset

    from ilm.dicom.parse import FileMeta

__all__ = ["ArchiveService", "ImportReport", "iter_files", "INGEST_GROUP_FILES", "INGEST_GROUP_BYTES"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return "unknown"


@dataclass
class ImportReport:
    """Counts and reasons of one import run."""

    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    bytes_stored: int = 0
    problems: list[IngestResult] = field(default_factory=list)

    def add(self, r: IngestResult) -> None:
        if r.status is IngestStatus.STORED:
            self.stored += 1
            self.bytes_stored += r.size
        elif r.status is IngestStatus.DUPLICATE:
            self.duplicates += 1
        elif r.status is IngestStatus.CONFLICT:
            self.conflicts += 1
            self.problems.append(r)
        else:
            self.rejected += 1
            self.problems.append(r)

    @property
    def total(self) -> int:
        return self.stored + self.duplicates + self.conflicts + self.rejected


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under ``paths`` (recursively), in a stable order."""
    for p in paths:
        if p.is_dir():
            for dirpath, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    yield Path(dirpath) / name
        else:
            yield p


class _KeyLocks:
    """Serialises work on the same SOP Instance UID inside this process: one lock per UID
    in use (striped locks made concurrent STOW-RS requests of 20 instances wait on each other)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}  # key -> (its lock, holders and waiters)

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        with self._mutex:
            lock, users = self._locks.get(key, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._mutex:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    @contextmanager
    def all(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold the locks of every key, taken in sorted order so that two callers never deadlock."""
        with ExitStack() as stack:
            for key in sorted(set(keys)):
                stack.enter_context(self(key))
            yield


@dataclass
class _Written:
    """An instance whose object is on a tier, not catalogued yet (ArchiveService._write)."""

    f: InstanceFacts
    blob: bytes
    base: dict[str, Any]  # the IngestResult fields of the instance
    tier_name: str
    tier: Tier
    key: str
    sha: str
    wrote: bool  # written now (False: an identical object a crash left was adopted)
    lock: tuple[str, datetime] | None = None  # (mode, retain-until) on a WORM tier


# Files stored together by ingest_many (a STOW-RS request's parts, an import's files): at most
# this many and this many bytes in memory and in one catalog transaction.
INGEST_GROUP_FILES = 50
INGEST_GROUP_BYTES = 64 * 1024 * 1024

# Objects of one STOW-RS request written at once: their hashing, writing and flushing overlap
# (hashlib, write and fsync release Python's lock; the file system commits concurrent flushes together).
_WRITER_THREADS = 4


class ArchiveService:
    """One archive: settings, catalog and tiers."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog.open(settings.catalog_url,
                                               sqlite_synchronous=settings.catalog.sqlite_synchronous)
        self._tiers: dict[str, Tier] = {}
        self._tier_lock = threading.Lock()
        self._sop_lock = _KeyLocks()
        self._writer_pool: ThreadPoolExecutor | None = None  # _store_many's writers, started on first use
        self._patient_pks: dict[tuple[str, str], int] = {}  # patients are never deleted
        self.access = AccessRecorder(self.catalog)
        self.atna = AuditEmitter(settings, self.catalog)  # DICOM audit messages ([audit], docs/security.md)
        # Access-based tiering: promotion on read and prefetch of priors (ilm serve starts its worker).
        self.promotions = Promoter(self.catalog, settings, self.tier)
        self.spill = Spill(settings, self.catalog, self.tier)  # ingest tier full: the next tier down
        self.clock: Callable[[], datetime] = _now  # restores: tests set another clock
        self._restore_lock = threading.Lock()
        self.replicas = Replicator(settings, self.catalog, self.tier)  # the ``replicas`` tier option (ilm.fixity)
        self.scrub = Scrubber(self.catalog, settings, self.tier)  # ilm serve starts it
        self._tokens = TokenStore(self.catalog)  # API tokens (ilm.security)
        self.metrics = ArchiveMetrics(self._metrics_snapshot, self._promotion_counts)  # GET /metrics (ilm.metrics)
        # Applies started over HTTP run in the background; their progress is polled (ilm.jobs).
        self._overview = Overview(self._overview_figures)  # the dashboard's figures, kept fresh
        self.apply_jobs = ApplyJobs(lambda plan_id, by, progress: self.apply(plan_id, approved_by=by,
                                                                              progress=progress))

    @classmethod
    def open(cls, settings: Settings) -> "ArchiveService":
        return cls(settings)

    def close(self) -> None:
        self.promotions.stop()
        self.atna.close()  # what is queued and the trail's last entries, written or spooled
        self.scrub.stop()
        if self._writer_pool is not None:
            self._writer_pool.shutdown()
        try:
            self.access.close()
        finally:
            self.catalog.close()

    def tier(self, name: str) -> Tier:
        """The backend of tier ``name``, opened on first use."""
        with self._tier_lock:
            t = self._tiers.get(name)
            if t is None:
                t = self._tiers[name] = open_tier(name, self.settings)
            return t

    # -- ingest ---------------------------------------------------------------

    def ingest_bytes(self, data: bytes, source: str, *, study_uid: str | None = None,
                     batch: ImportBatch | None = None) -> IngestResult:
        """Store one DICOM file given as bytes (import, STOW-RS).

        With ``study_uid`` (STOW-RS to /studies/{study}), an instance of another
        study is rejected and nothing is stored. ``batch``: the audit batch
        (``import_batch``) the instance arrived in.
        """
        from ilm.dicom.parse import read_instance

        try:
            facts, blob = read_instance(data, "data")
        except RejectedInstance as exc:
            return IngestResult(IngestStatus.REJECTED, source, size=len(data), reason=exc.reason)
        result = self._ingest_facts(facts, blob, source, study_uid)
        if result.status is IngestStatus.STORED:
            self.metrics.stored(source, result.size)
        if batch is not None:
            batch.note(facts, result.status in (IngestStatus.STORED, IngestStatus.DUPLICATE))
        return result

    def ingest_many(self, items: Sequence[tuple[bytes, str]], *, study_uid: str | None = None,
                    batch: ImportBatch | None = None) -> list[IngestResult]:
        """``ingest_bytes`` for several files (data, source) at once, as a STOW-RS request
        brings them: the same results, in order; the objects are written in parallel
        and catalogued in one transaction, so a request costs one commit, and its
        flushes to disk overlap. Each instance is acknowledged only once it is stored
        and catalogued, as with ``ingest_bytes``."""
        from ilm.dicom.parse import read_instance

        results: list[IngestResult | None] = [None] * len(items)
        parsed: list[tuple[int, InstanceFacts, bytes, str]] = []
        for i, (data, source) in enumerate(items):
            try:
                facts, blob = read_instance(data, "data")
            except RejectedInstance as exc:
                results[i] = IngestResult(IngestStatus.REJECTED, source, size=len(data), reason=exc.reason)
                continue
            results[i] = self._wrong_study(facts, blob, source, study_uid)
            parsed.append((i, facts, blob, source))
        todo = [(i, f, b, s) for i, f, b, s in parsed if results[i] is None]
        for (i, _, _, _), r in zip(todo, self._store_many([(f, b, s) for _, f, b, s in todo])):
            results[i] = r
        out = [r for r in results if r is not None]
        for r in out:
            if r.status is IngestStatus.STORED:
                self.metrics.stored(r.source, r.size)
        if batch is not None:
            for i, facts, _, _ in parsed:
                batch.note(facts, out[i].status in (IngestStatus.STORED, IngestStatus.DUPLICATE))
        return out

    @staticmethod
    def _wrong_study(facts: InstanceFacts, blob: bytes, source: str, study_uid: str | None) -> IngestResult | None:
        """The rejection of an instance sent to /studies/{study_uid} that belongs to another study."""
        if study_uid is None or facts.study_instance_uid == study_uid:
            return None
        return IngestResult(
            IngestStatus.REJECTED, source, sop_instance_uid=facts.sop_instance_uid,
            sop_class_uid=facts.sop_class_uid, study_instance_uid=facts.study_instance_uid,
            series_instance_uid=facts.series_instance_uid, size=len(blob),
            reason=f"instance of study {facts.study_instance_uid}, not of the requested study {study_uid}",
        )

    def _ingest_facts(self, facts: InstanceFacts, blob: bytes, source: str, study_uid: str | None) -> IngestResult:
        return self._wrong_study(facts, blob, source, study_uid) or self._store(facts, blob, source)

    def ingest_dataset(self, file_meta: FileMeta | Dataset, dataset: bytes, source: str, *,
                       batch: ImportBatch | None = None) -> IngestResult:
        """Store one dataset as a C-STORE delivers it: its file meta and encoded bytes."""
        from ilm.dicom.parse import part10_bytes

        try:
            data = part10_bytes(file_meta, dataset)
        except Exception as exc:  # a file meta we cannot encode is the sender's fault
            return IngestResult(IngestStatus.REJECTED, source, reason=f"{source}: bad file meta: {exc}")
        return self.ingest_bytes(data, source, batch=batch)

    def import_batch(self, sender: str, address: str = "", *, ae_title: bool = False) -> ImportBatch | None:
        """An audit batch for instances that arrive together (an association, a STOW-RS
        request, an import run): one Import message per study when it is closed.
        None when no audit sink is configured."""
        return self.atna.import_batch(sender, address, ae_title=ae_title)

    @staticmethod
    def _read_file(path: Path) -> bytes | IngestResult:
        try:
            return path.read_bytes()
        except OSError as exc:
            return IngestResult(IngestStatus.REJECTED, str(path), reason=f"{path}: cannot read: {exc.strerror}")

    def ingest_path(self, path: Path, *, batch: ImportBatch | None = None) -> IngestResult:
        data = self._read_file(path)
        return data if isinstance(data, IngestResult) else self.ingest_bytes(data, str(path), batch=batch)

    def import_paths(
        self, paths: Iterable[Path], progress: Callable[[IngestResult], None] | None = None
    ) -> ImportReport:
        """Import every file under ``paths``, stored in groups like the parts of a STOW-RS
        request (``ingest_many``: objects written in parallel, one catalog transaction per
        group of at most INGEST_GROUP_FILES files and INGEST_GROUP_BYTES bytes)."""
        report = ImportReport()
        group: list[tuple[bytes, str]] = []

        def done(results: Iterable[IngestResult]) -> None:
            for r in results:
                report.add(r)
                if progress:
                    progress(r)

        with self.import_batch(_login()) or nullcontext() as batch:
            for p in iter_files(paths):
                data = self._read_file(p)
                if isinstance(data, IngestResult) or (group and (
                        len(group) >= INGEST_GROUP_FILES
                        or sum(len(d) for d, _ in group) + len(data) > INGEST_GROUP_BYTES)):
                    done(self.ingest_many(group, batch=batch))  # results stay in the order of the files
                    group = []
                if isinstance(data, IngestResult):
                    done([data])
                else:
                    group.append((data, str(p)))
            done(self.ingest_many(group, batch=batch))
        self._snapshot_after("import")
        return report

    def _store(self, f: InstanceFacts, blob: bytes, source: str) -> IngestResult:
        """Write first, then catalog: the common case (a new instance) costs one
        hash, one exclusive write and one transaction. A re-send finds the key
        taken, or the catalog row present, and is sorted out on that slower path."""
        with self._sop_lock(f.sop_instance_uid):
            written = self._write(f, blob, source)
            if isinstance(written, IngestResult):
                return written
            result = self._catalogue([written])[0]
        self._after_stored([written], [result])
        return result

    def _store_many(self, items: list[tuple[InstanceFacts, bytes, str]]) -> list[IngestResult]:
        """``_store`` for several instances at once (a STOW-RS request): the objects are
        written in parallel (their flushes to disk overlap) and catalogued in ONE
        transaction. An instance whose SOP Instance UID came earlier in ``items``
        goes through ``_store`` afterwards (it finds the first one stored)."""
        first: dict[str, int] = {}
        for i, (f, _, _) in enumerate(items):
            first.setdefault(f.sop_instance_uid, i)
        results: list[IngestResult | None] = [None] * len(items)
        batch = [i for i in first.values()]
        done: list[_Written] = []
        with self._sop_lock.all(items[i][0].sop_instance_uid for i in batch):
            outcomes = list(self._writers().map(lambda i: self._write(*items[i]), batch))
            for i, out in zip(batch, outcomes):
                if isinstance(out, IngestResult):
                    results[i] = out
            pending = [(i, out) for i, out in zip(batch, outcomes) if isinstance(out, _Written)]
            for (i, w), r in zip(pending, self._catalogue([w for _, w in pending])):
                results[i] = r
                done.append(w)
        self._after_stored(done, [results[i] for i, _ in pending])  # type: ignore[misc]
        for i, (f, blob, source) in enumerate(items):
            if results[i] is None:
                results[i] = self._store(f, blob, source)
        return [r for r in results if r is not None]

    def _writers(self) -> ThreadPoolExecutor:
        """The threads that write the objects of a batch (``_store_many``)."""
        with self._tier_lock:
            if self._writer_pool is None:
                self._writer_pool = ThreadPoolExecutor(_WRITER_THREADS, thread_name_prefix="ilm-ingest-write")
            return self._writer_pool

    def _write(self, f: InstanceFacts, blob: bytes, source: str) -> "_Written | IngestResult":
        """Put the object of one instance on the ingest tier (or the next one down when it is
        full), or adopt the identical uncatalogued object a crash left there. An IngestResult
        when that already decides the instance (a re-send, a conflict, a failed tier).
        The caller holds the instance's SOP lock."""
        base: dict[str, Any] = dict(
            source=source,
            sop_instance_uid=f.sop_instance_uid,
            sop_class_uid=f.sop_class_uid,
            study_instance_uid=f.study_instance_uid,
            series_instance_uid=f.series_instance_uid,
            size=len(blob),
        )
        tier_name = self.settings.ingest_tier
        key = instance_key(f.study_instance_uid, f.series_instance_uid, f.sop_instance_uid)
        wrote = False
        try:
            tier = self.tier(tier_name)
            sha = tier.put(key, blob).sha256
            wrote = True
        except ObjectExists:
            sha = hashlib.sha256(blob).hexdigest()
            try:
                with self.catalog.read() as conn:
                    known = find_instance(conn, f.sop_instance_uid)
                if known is not None:
                    return self._known(f, blob, sha, known, base)
                # An object the catalog does not know: left by a crash between
                # write and commit. Adopt it only if it is the very same bytes.
                held = tier.stat(key)
            except SQLAlchemyError as exc:
                return IngestResult(IngestStatus.REJECTED, reason=f"catalog unavailable: {exc.__class__.__name__}", retryable=True, **base)
            except StorageError as exc:
                return IngestResult(IngestStatus.REJECTED, reason=str(exc), retryable=True, **base)
            if held.sha256 != sha:
                return self._conflict(f, blob, sha, base, f"an uncatalogued object with other content is at {tier_name}:{key}")
        except TierFull as full:  # a full disk: the next tier down that has room (ilm.spill)
            spilled = self.spill.put(tier_name, key, blob, f.study_instance_uid, full)
            if spilled is None:
                return IngestResult(IngestStatus.REJECTED, reason=f"{full}; no lower tier has room",
                                    retryable=True, **base)
            tier_name, tier, sha, wrote = spilled.tier_name, spilled.tier, spilled.sha256, spilled.wrote
        except (StorageError, IlmError) as exc:
            return IngestResult(
                IngestStatus.REJECTED, reason=f"storage tier {tier_name!r} failed: {exc}", retryable=True, **base
            )
        return _Written(f, blob, base, tier_name, tier, key, sha, wrote)

    def _catalogue(self, written: list["_Written"]) -> list[IngestResult]:
        """Catalog written objects in one transaction; their results, in order. When the
        transaction fails, nothing is catalogued and the objects written are removed.
        The caller holds the instances' SOP locks."""
        if not written:
            return []
        try:
            with self.catalog.write() as conn:
                now = _now()
                for w in written:
                    w.lock = worm.tier_lock(w.tier, now)
                inserted = record_instances(
                    conn, [NewCopy(w.f, len(w.blob), w.sha, w.tier_name, w.key, w.lock) for w in written],
                    now=now, patient_cache=self._patient_pks)
        except SQLAlchemyError as exc:
            for w in written:
                if w.wrote:
                    self._discard(w.tier, w.key)
            why = f"catalog write failed: {exc.__class__.__name__}: {exc.args[0] if exc.args else ''}"[:300]
            return [IngestResult(IngestStatus.REJECTED, reason=why, retryable=True, **w.base) for w in written]
        results = []
        for w, ok in zip(written, inserted):
            if ok:
                results.append(IngestResult(IngestStatus.STORED, **w.base))
                continue
            # Catalogued already (it may live on another tier now, or another
            # process stored it a moment ago): undo our write unless the
            # catalog points at that very object.
            with self.catalog.read() as conn:
                known = find_instance(conn, w.f.sop_instance_uid)
                ours = location_exists(conn, w.tier_name, w.key)
            if w.wrote and not ours:
                self._discard(w.tier, w.key)
            assert known is not None
            results.append(self._known(w.f, w.blob, w.sha, known, w.base))
        return results

    def _after_stored(self, written: list["_Written"], results: list[IngestResult]) -> None:
        """What follows a new instance once it is catalogued: replicas, WORM holds, prefetch."""
        for w, r in zip(written, results):
            if r.status is not IngestStatus.STORED:
                continue
            if self.replicas.wanted:  # the tier's replicas, written now (ilm.fixity.replicas)
                self.replicas.on_stored(w.tier_name, w.key, w.blob, w.sha, w.f.sop_instance_uid)
            if w.lock is not None:  # a WORM tier: a study under a legal hold holds its new objects too
                worm.hold_new_object(self.catalog, w.tier, w.key, w.f.study_instance_uid)
            self.promotions.on_stored(w.f.study_instance_uid)  # a new study: prefetch its priors (when configured)

    @staticmethod
    def _discard(tier: Tier, key: str) -> None:
        try:
            tier.delete(key)  # not catalogued: must not stay as an orphan
        except StorageError:
            pass  # left for reconcile; an identical re-send adopts it

    def _known(self, f: InstanceFacts, blob: bytes, sha: str, known: tuple[str, int], base: dict[str, object]) -> IngestResult:
        if known[0] == sha:  # the very bytes: they also repair copies a fixity check marked (ilm.fixity)
            fixed = repair_from_resend(self.catalog, self.tier, f.sop_instance_uid, blob, sha, str(base["source"]))
            why = "already stored, identical" + (f"; repaired {fixed} bad or missing copies with it" if fixed else "")
            return IngestResult(IngestStatus.DUPLICATE, reason=why, **base)  # type: ignore[arg-type]
        if self._same_dataset(f, blob):
            return IngestResult(IngestStatus.DUPLICATE, reason="already stored, identical", **base)  # type: ignore[arg-type]
        return self._conflict(f, blob, sha, base, "SOP Instance UID already stored with other content")

    def _same_dataset(self, f: InstanceFacts, blob: bytes) -> bool:
        """The same dataset under another file meta header (C-STORE rebuilds the
        header, STOW-RS and import keep the sender's) is a duplicate, not a conflict."""
        from ilm.dicom.parse import dataset_bytes

        with self.catalog.read() as conn:
            copies = instance_locations(conn, f.sop_instance_uid)
        for tier_name, key in copies:
            try:
                if key.endswith(".pack"):  # inside a packed study: its own byte range, not the whole pack
                    refs = [r for r in self.instances_to_read(f.study_instance_uid, sop_uid=f.sop_instance_uid)
                            if r.tier == tier_name]
                    if not refs:
                        continue
                    stored = self.read(refs[0])
                else:
                    stored = self.tier(tier_name).get(key)
            except (StorageError, IlmError):
                continue
            return dataset_bytes(stored) == dataset_bytes(blob)
        return False

    def _conflict(self, f: InstanceFacts, blob: bytes, sha: str, base: dict[str, object], why: str) -> IngestResult:
        """Keep the newcomer aside in the conflicts folder; the stored copy is untouched."""
        folder = self.settings.conflicts_path
        name = f"{f.sop_instance_uid}.{sha[:16]}.dcm"
        path = folder / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                tmp = folder / f".tmp-{uuid.uuid4().hex}"
                tmp.write_bytes(blob)
                os.replace(tmp, path)
            with self.catalog.write() as conn:
                record_conflict(conn, f, sha256=sha, size=len(blob), kept_at=str(path), source=str(base["source"]), now=_now())
        except (OSError, SQLAlchemyError) as exc:
            return IngestResult(IngestStatus.REJECTED, reason=f"{why}; could not keep it aside: {exc}", retryable=True, **base)  # type: ignore[arg-type]
        return IngestResult(IngestStatus.CONFLICT, reason=why, kept_aside_at=str(path), **base)  # type: ignore[arg-type]

    # -- retrieval -------------------------------------------------------------

    def instances_to_read(self, study_uid: str, series_uid: str | None = None,
                          sop_uid: str | None = None) -> list[InstanceRef]:
        """The instances of an active study, series or instance, each from its hottest verified copy."""
        with self.catalog.read() as conn:
            return instance_refs(conn, study_uid, series_uid, sop_uid, list(self.settings.tiers), now=self.clock())

    def read(self, ref: InstanceRef) -> bytes:
        """The stored Part 10 bytes of one instance, checked against its SHA-256 in the catalog.

        A copy whose bytes do not match is marked bad (ilm.fixity.on_read) and the next
        verified copy is read instead; IntegrityError when no copy is left. NotReady when
        the copy is on an archive tier and no restored copy is there yet (a restore is
        needed or under way); StorageError if the tier fails.
        """
        if ref.problem:  # no verified copy left: never served
            raise IntegrityError(ref.problem)
        t = self.settings.tiers.get(ref.tier)
        if t is not None and t.archive:
            fresh = self.instances_to_read(ref.study_uid, sop_uid=ref.sop_uid)
            hot = self.settings.tiers.get(fresh[0].tier) if fresh else None
            if fresh and not (hot is not None and hot.archive):
                return self.read(fresh[0])  # restored since ref was made
            restore_flow.check_readable(self.catalog, self.settings, self.tier, ref.study_uid, self.clock())
            raise NotReady(f"study {ref.study_uid} is on archive tier {ref.tier!r}: it must be restored first "
                           f"(ilm recall {ref.study_uid})")
        try:
            try:
                return self._read_checked(ref)
            except IntegrityError:
                return self._read_checked(ref)  # once more: a mismatch that persists is the copy's, not the read's
        except IntegrityError as exc:
            # The copy is bad: marked (never read again until repaired) and audited, like a fixity
            # check finding it; the read goes on with the next verified copy, if there is one.
            mark_bad_on_read(self.catalog, ref.sop_uid, ref.tier, str(exc))
            fresh = self.instances_to_read(ref.study_uid, sop_uid=ref.sop_uid)
            if not fresh or (fresh[0].tier, fresh[0].key, fresh[0].pack_offset) == (ref.tier, ref.key, ref.pack_offset):
                raise
            logging.getLogger(__name__).warning("%s: read from tier %r instead (the copy on %r is bad)",
                                                ref.sop_uid, fresh[0].tier, ref.tier)
            return self.read(fresh[0])
        except ObjectNotFound:
            # Moved since ``ref`` was resolved (a promotion this very read queued, a policy
            # move): the move committed the new copy before deleting this one, so read that.
            fresh = self.instances_to_read(ref.study_uid, sop_uid=ref.sop_uid)
            if not fresh or (fresh[0].tier, fresh[0].key, fresh[0].pack_offset) == (ref.tier, ref.key, ref.pack_offset):
                raise
            return self.read(fresh[0])

    def _read_checked(self, ref: InstanceRef) -> bytes:
        """One copy's bytes, checked against the instance's SHA-256 in the catalog (IntegrityError)."""
        if ref.pack_offset is not None and ref.pack_length is not None:
            # One instance of a packed study: a ranged read of its bytes only (the tier's checksum covers the whole pack).
            data = self.tier(ref.tier).get_range(ref.key, ref.pack_offset, ref.pack_length)
        else:
            data = self.tier(ref.tier).get(ref.key)
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise IntegrityError(f"tier {ref.tier!r}: instance {ref.sop_uid} in {ref.key} does not match its SHA-256")
        return data

    def checked_file(self, ref: InstanceRef) -> CheckedFile | None:
        """The file that holds this instance, its bytes hashed just now against the catalog's
        SHA-256, when the copy is a plain file on a filesystem tier (not encrypted, not packed,
        not an archive tier): a retrieval sends that file as it is, without reading it into
        memory first. None for any other copy, or when the file is gone (moved since ``ref``
        was resolved): read those with ``read``. IntegrityError when the file's bytes do not
        match the catalog's SHA-256: they are never sent."""
        if ref.problem:
            raise IntegrityError(ref.problem)
        t = self.settings.tiers.get(ref.tier)
        tier = self.tier(ref.tier)
        if t is None or t.archive or ref.pack_offset is not None or not isinstance(tier, FilesystemTier):
            return None
        try:
            return tier.checked_file(ref.key, ref.sha256)
        except ObjectNotFound:
            return None

    def prepare_read(self, study_uid: str, *, wait_seconds: float = 0.0) -> None:
        """Make sure every instance of a study can be read now, or raise NotReady
        (with the seconds until a restore completes, when one is under way).
        Retrieval front-ends call this before sending a study.

        Instances of a study on an archive tier are read from their restored
        copies while those are valid. With ``wait_seconds``, a restore due
        within that time is waited for (and finished here if no worker does
        it first); one due later raises NotReady at once. See
        ``ilm.lifecycle.restore.check_readable`` for when a read starts a restore.
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                restore_flow.check_readable(self.catalog, self.settings, self.tier, study_uid, self.clock())
                return
            except NotReady as exc:
                left = deadline - time.monotonic()
                if exc.retry_after is None or exc.retry_after > left:
                    raise
                time.sleep(max(0.05, min(exc.retry_after, left, restore_flow.WORKER_INTERVAL_SECONDS)))
                if self._restore_lock.acquire(blocking=False):  # else another thread is copying it
                    try:
                        restore_flow.process_restores(self.catalog, self.settings, self.tier, self.clock(),
                                                      study_uid=study_uid, workers=self.settings.lifecycle.move_workers)
                    finally:
                        self._restore_lock.release()

    def note_access(self, study_uid: str, interface: str, who: str = "", instances: int = 0, *,
                    address: str = "") -> None:
        """Record a retrieval (not a query); written to the catalog in batches. ``who``: a calling
        AE title, a client's address, or a name (``token:NAME``) with the client's ``address``."""
        self.access.note(study_uid, interface, who, instances)
        self.atna.retrieved(study_uid, interface, who, instances, address=address)  # Instances Transferred / Export
        self.promotions.on_read(study_uid, interface, who)  # queued for the promotion worker, never waits

    def export(self, study_uids: Iterable[str], to: Path, *, dicomdir: bool = False, as_zip: bool = False,
               by: str, who: str = "", address: str = "", interface: str = "cli",
               described_as: str = "") -> study_export.ExportReport:
        """Write studies out of the archive (ilm export, GET /api/studies/{uid}/export; ilm.study_export):
        into the folder ``to`` (``dicomdir``: as a DICOM file-set with its DICOMDIR), or with ``as_zip``
        as the new ZIP file ``to``. Each file holds the stored bytes, read from the hottest verified copy.

        Everything is checked before a file is placed, and a refusal writes nothing: InvalidUID,
        NotFound (unknown or expired study), NotReady (on an archive tier and not restored: ilm
        recall), ExportRefused (the destination cannot take it), IntegrityError (a copy that does not
        match the catalog). Once written, each study counts as accessed by ``who`` (``by`` when empty;
        ``address``: where it went, see ``note_access``) over interface "export" (last access, access
        log, the ATNA Export message) and gets an entry ``study.export`` in the audit trail by ``by``."""
        from ilm import study_export

        uids = list(dict.fromkeys(validate_uid(u, "Study Instance UID") for u in study_uids))
        if not uids:
            raise IlmError("no study to export: give one or more Study Instance UIDs")
        if not as_zip:
            study_export.check_folder(to, dicomdir=dicomdir)
        archive = {name for name, t in self.settings.tiers.items() if t.archive}
        refs: list[InstanceRef] = []
        for uid in uids:
            mine = self.instances_to_read(uid)
            if not mine:
                raise NotFound(f"no study {uid} in the archive (unknown, or expired); nothing exported")
            if any(r.tier in archive for r in mine):
                self.prepare_read(uid)  # NotReady: restore it first, as a C-GET would have to
                mine = self.instances_to_read(uid)  # the restored copies
            refs += mine
        report = study_export.ExportReport(described_as or str(to), dicomdir=dicomdir)
        staged = study_export.stage(refs, self.read, to.parent if as_zip else to, dicomdir=dicomdir)
        report.studies, report.bytes = staged.studies, staged.bytes
        if as_zip:
            study_export.deliver_zip(staged, to, report)
        else:
            study_export.deliver_folder(staged, to, report)
        for uid, n in report.studies.items():
            self.note_access(uid, "export", who or by, n, address=address)
        study_export.record_exports(self.catalog, report, by=by, interface=interface, at=_now())
        return report

    def commitment(self, requested: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
        """Storage Commitment of (SOP Class UID, SOP Instance UID) pairs: the committed
        ones (a VERIFIED copy of an active study's instance of that class) and the
        failed ones with their Failure Reason (0x0112 no such object instance,
        0x0119 stored under another SOP Class)."""
        with self.catalog.read() as conn:
            held = verified_sop_classes(conn, [uid for _, uid in requested])
        committed: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        for sop_class, uid in requested:
            if uid not in held:
                failed.append((sop_class, uid, 0x0112))
            elif held[uid] != sop_class:
                failed.append((sop_class, uid, 0x0119))
            else:
                committed.append((sop_class, uid))
        return committed, failed

    # -- queries --------------------------------------------------------------

    def studies(self, flt: StudyFilter) -> list[StudySummary]:
        with self.catalog.read() as conn:
            return list_studies(conn, flt)

    def study(self, study_uid: str) -> StudyDetail | None:
        with self.catalog.read() as conn:
            return study_detail(conn, study_uid)

    def summary(self) -> dict[str, list[SummaryRow]]:
        with self.catalog.read() as conn:
            return archive_summary(conn)

    def overview(self) -> Figures:
        """The dashboard's figures (by tier, by modality, totals, bytes received per month for
        three years), recomputed in the background once older than a minute (ilm.overview)."""
        return self._overview.get()

    def _overview_figures(self) -> dict[str, Any]:
        since = datetime.now(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        since = since.replace(year=since.year - 3)
        with self.catalog.read() as conn:
            summary = archive_summary(conn)
            months = received_by_month(conn, since)
        return {"tier": summary["tier"], "modality": summary["modality"],
                "studies": sum(r.studies for r in summary["year"]),
                "bytes": sum(r.size_bytes for r in summary["year"]),
                "growth": [{"month": m, "studies": n, "bytes": b} for m, n, b in sorted(months)],
                "tier_history": tier_history.read_history(self.catalog, since.date())}

    # -- analytics and cost (ilm.analytics, docs/cost.md) -----------------------

    def stats(self, *, today: date | None = None, largest: int = 10) -> dict[str, Any]:
        """Composition, growth and use of the archive (``ilm stats``)."""
        return analytics.stats(self.catalog, today=today or date.today(), largest=largest)

    def snapshot_tiers(self) -> tier_history.Snapshot:
        """Record today's storage by tier (and, on a catalog without history, the past as the
        catalog knows it): ``ilm stats --snapshot``, ``ilm serve`` daily, after applies and imports."""
        return tier_history.record_snapshot(self.catalog, self.clock())

    def tier_history(self, since: date | None = None) -> list[dict[str, Any]]:
        """Storage by tier and arrivals per month, from the recorded snapshots (docs/cost.md)."""
        return tier_history.read_history(self.catalog, since)

    def _snapshot_after(self, what: str) -> None:
        """A snapshot after a run that changed what is stored; its failure only logged."""
        try:
            self.snapshot_tiers()
        except Exception as exc:
            logging.getLogger("ilm.history").warning("storage by tier not recorded after %s: %s", what, exc)

    def cost(self, policies: Iterable[Path] = (), *, today: date | None = None,
             options: analytics.CostOptions | None = None) -> dict[str, Any]:
        """Monthly cost now and the projection per scenario (``ilm cost``); PolicyError for a bad policy."""
        sources = [self.read_policy(p) for p in policies]
        return analytics.cost_report(self.catalog, self.settings, sources, today=today or date.today(),
                                     opts=options or analytics.CostOptions())

    def report(self, policies: Iterable[Path] = (), *, today: date | None = None,
               options: analytics.CostOptions | None = None, by: str = "ilm report") -> dict[str, Any]:
        """What the HTML report shows: stats, the cost comparison, and each policy's plan
        (a preview: not stored, nothing audited). PolicyError for a bad policy."""
        day = today or date.today()
        paths = list(policies)
        cost = self.cost(paths, today=day, options=options)
        plans = []
        for p in paths:
            made = self.plan(p, as_of=day, by=by, store=False)
            plans.append({"policy": str(p), "name": made.plan.policy_name, "summary": made.plan.summary})
        return {"as_of": day.isoformat(), "generated_at": _now().isoformat(timespec="seconds"),
                "stats": self.stats(today=day), "cost": cost, "plans": plans}

    # -- lifecycle --------------------------------------------------------------

    def patient_key(self, patient_id: str, issuer: str = "") -> str:
        return patient_key(patient_id, issuer)

    def hold_add(self, scope: str, target: str, reason: str, by: str) -> int:
        """Place a hold; on WORM S3 tiers, its studies' objects get an Object Lock legal hold.
        StorageError (the hold is placed all the same) when the store refused some."""
        hold_id = retention.place_hold(self.catalog, scope, target, reason, by)
        self._mirror_holds(worm.covered_studies(self.catalog, scope, target), f"hold {hold_id} placed")
        return hold_id

    def hold_remove(self, hold_id: int, by: str) -> HoldRow:
        """Release a hold; S3 legal holds are cleared on objects of studies no other hold covers."""
        row = retention.lift_hold(self.catalog, hold_id, by)
        self._mirror_holds(worm.covered_studies(self.catalog, row.scope, row.target), f"hold {hold_id} released")
        return row

    def worm_status(self) -> list[worm.WormStatus]:
        """Each WORM tier: mode, copies locked now and until when, copies kept after moves (ilm worm status)."""
        return worm.worm_status(self.catalog, self.settings, self.clock())

    def hold_sync(self) -> worm.MirrorReport:
        """Set the S3 legal hold of every study any hold ever covered to what ilm's holds say now."""
        uids = [u for h in self.holds(active_only=False) for u in worm.covered_studies(self.catalog, h.scope, h.target)]
        return worm.mirror_holds(self.catalog, self.settings, self.tier, uids)

    def _mirror_holds(self, study_uids: list[str], done: str) -> None:
        report = worm.mirror_holds(self.catalog, self.settings, self.tier, study_uids)
        if report.problems:
            raise StorageError(f"{done} in the catalog, but the S3 legal hold could not be set on "
                               f"{len(report.problems)} objects ({report.problems[0]}); run 'ilm hold sync'")

    def holds(self, *, active_only: bool = True) -> list[HoldRow]:
        return retention.holds(self.catalog, active_only=active_only)

    def label(self, study_uid: str, name: str, *, present: bool, by: str) -> None:
        retention.label(self.catalog, study_uid, name, present=present, by=by)

    def restore(self, study_uid: str, by: str) -> None:
        retention.restore(self.catalog, study_uid, by)

    def purge_due(self) -> list[QuarantinedStudy]:
        with self.catalog.read() as conn:
            return quarantined_studies(conn, due_by=datetime.now(timezone.utc))

    def purge(self, by: str, progress: Callable[[str], None] | None = None) -> retention.PurgeReport:
        """Purge what is past quarantine (not what a WORM lock still holds), and drop the
        copies moves kept for a lock that has ended."""
        now = self.clock()
        report = retention.purge(self.catalog, self.tier, by=by, now=now, progress=progress)
        released = worm.drop_released(self.catalog, self.tier, now)
        report.released, report.problems = released.dropped, report.problems + released.problems
        return report

    def audit(self, *, study_uid: str | None = None, plan_id: str | None = None, limit: int | None = None,
              offset: int = 0, newest_first: bool = False) -> list[audit_chain.AuditEntry]:
        """Audit entries (about one study or plan when given), a page at a time when ``limit`` is given."""
        with self.catalog.read() as conn:
            return list(read_audit(conn, study_uid=study_uid, plan_id=plan_id, limit=limit, offset=offset,
                                   newest_first=newest_first))

    def audit_count(self, *, study_uid: str | None = None, plan_id: str | None = None) -> int:
        with self.catalog.read() as conn:
            return count_audit(conn, study_uid=study_uid, plan_id=plan_id)

    def audit_verify(self) -> list[audit_chain.ChainBreak]:
        with self.catalog.read() as conn:
            return audit_chain.verify_chain(read_audit(conn))

    def audit_export(self, out: Path, *, since: datetime | None = None) -> ExportReport:
        """The audit trail (entries at or after ``since``) as DICOM audit messages in ``out``."""
        return export_trail(self.catalog, self.settings, out, since=since)

    def read_policy(self, path: Path) -> PolicySource:
        """Parse a policy file against this archive's tiers (PolicyError on any problem)."""
        return read_policy(path, self.settings.lifecycle_tiers)  # replica tiers are no policy target

    def plan(self, policy: Path, *, as_of: date, by: str, store: bool = True,
             progress: Callable[[int], None] | None = None) -> PlanResult:
        source = self.read_policy(policy)
        with self.metrics.policy_run("plan"):
            return make_plan(self.catalog, self.settings, source, as_of=as_of, created_by=by,
                             store=store, progress=progress)

    def plan_get(self, plan_id: str) -> PlanRow | None:
        with self.catalog.read() as conn:
            return get_plan(conn, plan_id)

    def plan_actions(self, plan_id: str, *, states: tuple[str, ...] | None = None, limit: int | None = None,
                     offset: int = 0) -> list[ActionRow]:
        with self.catalog.read() as conn:
            return list(plan_action_rows(conn, plan_id, states, limit=limit, offset=offset))

    def plans(self, limit: int = 50) -> list[PlanRow]:
        with self.catalog.read() as conn:
            return list_plans(conn, limit)

    def explain(self, study_uid: str, policy: Path, *, as_of: date) -> Decision | None:
        """Every rule's match or miss and every protection, for one study (None: not active)."""
        source = self.read_policy(policy)
        with self.catalog.read() as conn:
            inputs = load_policy_inputs(conn, [study_uid])
        if not inputs.studies:
            return None
        s = inputs.studies[0]
        return evaluate(source.policy, s, inputs.patients.get(s.patient_key), as_of, explain=True)

    def apply(self, plan_id: str, *, approved_by: str,
              progress: Callable[[ActionRow, str], None] | None = None) -> ApplyReport:
        """Execute a stored plan (see ilm.lifecycle.apply); counted in the metrics."""
        with self.metrics.policy_run("apply"):
            report = self._counted_moves(lambda p: self._apply(plan_id, approved_by=approved_by, progress=p), progress)
        self._snapshot_after(f"apply {plan_id}")
        return report

    def _counted_moves(self, run: Callable[[Callable[[ActionRow, str], None]], ApplyReport],
                       progress: Callable[[ActionRow, str], None] | None) -> ApplyReport:
        """Run an apply and count its moves (done, failed) and bytes moved in the metrics."""
        moves: list[str] = []

        def seen(a: ActionRow, state: str) -> None:
            if a.decision == "transition":
                moves.append(a.study_uid)
            if progress is not None:
                progress(a, state)

        report = run(seen)
        failed = {uid for uid, _ in report.failed}
        skipped = {uid for uid, _ in report.skipped}
        self.metrics.moved(done=sum(1 for u in moves if u not in failed and u not in skipped),
                           failed=sum(1 for u in moves if u in failed), nbytes=report.bytes_moved)
        return report

    def _apply(self, plan_id: str, *, approved_by: str, progress: Callable[[ActionRow, str], None] | None) -> ApplyReport:
        plan = self.plan_get(plan_id)
        if plan is None:
            raise NotFound(f"no plan {plan_id!r} (see 'ilm plan list')")
        if watermark.is_watermark_plan(plan):  # a watermark run's plan (ilm watermark)
            source = self.read_policy(Path(plan.policy_path)) if plan.policy_path else None
            return watermark.apply_watermark_plan(self.catalog, self.settings, self.tier, plan_id, policy=source,
                                                  approved_by=approved_by, progress=progress)
        source = self.read_policy(Path(plan.policy_path))
        return apply_plan(self.catalog, self.settings, self.tier, plan_id, source, approved_by=approved_by,
                          progress=progress)

    def apply_start(self, plan_id: str, *, approved_by: str) -> ApplyProgress:
        """Start applying a plan in the background (REST API, dashboard); poll ``apply_progress``.

        NotFound for an unknown plan; NothingToApply for one without a pending
        or failed action. A start while the plan's apply runs returns that apply.
        The apply itself re-checks everything ``ilm apply`` does.
        """
        plan = self.plan_get(plan_id)
        if plan is None:
            raise NotFound(f"no plan {plan_id!r} (see 'ilm plan list')")
        running = self.apply_jobs.status(plan_id)
        if running is not None and running.running:
            return running
        pending = sum(1 for a in self.plan_actions(plan_id) if a.state in ("pending", "failed"))
        if pending == 0:
            raise NothingToApply(f"plan {plan_id} is {plan.state}: no pending or failed action left to apply")
        return self.apply_jobs.start(plan_id, approved_by, pending)

    def apply_progress(self, plan_id: str) -> ApplyProgress | None:
        """Progress of the background apply of ``plan_id`` in this process (None: none was started here)."""
        return self.apply_jobs.status(plan_id)

    # -- for the REST API (ilm.web.api_*) ----------------------------------------

    def policy_file(self, path: str) -> Path:
        """A policy path an API client names: relative to ILM_HOME (or absolute) and inside it,
        so a request cannot make the server read other files. IlmError otherwise."""
        home = self.settings.home.resolve()
        resolved = self.settings.resolve(path).resolve()
        if not resolved.is_relative_to(home):
            raise IlmError(f"policy path {path!r} is outside ILM_HOME ({home}); give a path inside it, "
                           "or send the policy itself")
        if not resolved.is_file():
            raise IlmError(f"policy path {path!r}: no such file in ILM_HOME ({home})")
        return resolved

    def keep_policy(self, text: str) -> Path:
        """Keep an uploaded policy as ILM_HOME/policies/api/<sha256>.yaml (apply re-reads a plan's
        policy by path and checks its hash); PolicyError, and nothing kept, when it does not parse."""
        parse_policy(text, known_tiers=self.settings.lifecycle_tiers, source="policy")  # PolicyError: refused whole
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        folder = self.settings.home / "policies" / "api"
        path = folder / f"{digest[:32]}.yaml"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".tmp-{uuid.uuid4().hex}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        return path

    def plan_export(self, plan_id: str) -> dict[str, Any]:
        """A plan with its decisions as ``ilm plan export`` writes it (NotFound: no such plan)."""
        plan = self.plan_get(plan_id)
        if plan is None:
            raise NotFound(f"no plan {plan_id!r}")
        return export_plan(plan, self.plan_actions(plan_id))

    def plan_compare(self, plan_id: str, peer: Any) -> list[dict[str, Any]]:
        """Where a stored plan and a peer's exported plan decide differently (ValueError: a bad export)."""
        theirs = peer_decisions(peer)
        mine = {a["study_uid"]: (a["action"], a["tier"], a["rule"]) for a in self.plan_export(plan_id)["decisions"]}
        return compare_decisions(mine, theirs)

    def check_policy_unchanged(self, plan_id: str) -> None:
        """PlanChanged when the policy file of a plan changed since it was made (an apply would
        refuse it): the REST API says so with 409 before starting anything. NotFound: no such plan."""
        plan = self.plan_get(plan_id)
        if plan is None:
            raise NotFound(f"no plan {plan_id!r}")
        if watermark.is_watermark_plan(plan) or not plan.policy_path:
            return
        if self.read_policy(Path(plan.policy_path)).sha256 != plan.policy_sha256:
            raise PlanChanged(f"plan {plan_id}: the policy file {plan.policy_path} changed since the plan "
                              "was made; make a new plan")

    def plan_progress(self, plan_id: str) -> dict[str, Any]:
        """How far the apply of a plan is, from the catalog (so an ``ilm apply`` in another process
        shows too): the plan's state, actions to do and processed, their bytes, and the background
        apply of this process if there is one (``job``). NotFound: no such plan."""
        plan = self.plan_get(plan_id)
        if plan is None:
            raise NotFound(f"no plan {plan_id!r}")
        with self.catalog.read() as conn:
            totals = plan_action_totals(conn, plan_id)
        acting = {k: v for k, v in totals.items() if k[0] != "kept"}

        def count(states: tuple[str, ...], *, nbytes: bool = False) -> int:
            return sum(v[1] if nbytes else v[0] for (state, decision), v in acting.items()
                       if state in states and (not nbytes or decision == "transition"))

        processed = ("done", "skipped", "failed")
        every = ("pending", *processed)
        return {"plan_id": plan_id, "plan_state": plan.state, "approved_by": plan.approved_by,
                "total": count(every), "processed": count(processed), "done": count(("done",)),
                "skipped": count(("skipped",)), "failed": count(("failed",)),
                "bytes_total": count(every, nbytes=True), "bytes_processed": count(processed, nbytes=True),
                "job": self.apply_progress(plan_id)}

    def quarantined(self) -> list[QuarantinedStudy]:
        """Expired studies in quarantine (restorable until purged), due or not."""
        with self.catalog.read() as conn:
            return quarantined_studies(conn)

    def ready(self) -> health.Readiness:
        """Whether the catalog and every tier answer now (GET /health/ready)."""
        def ping() -> None:
            with self.catalog.read() as conn:
                ping_catalog(conn)

        return health.readiness(ping, {name: functools.partial(self.tier, name) for name in self.settings.tiers})

    def _metrics_snapshot(self) -> CatalogSnapshot:
        tiers = dict.fromkeys(self.settings.tiers, (0, 0))  # an empty tier shows as 0, not as missing
        with self.catalog.read() as conn:
            tiers.update(tier_usage(conn))
        pending = sum(1 for r in self.restores(active_only=True) if r.state in ("requested", "restoring"))
        return CatalogSnapshot(tiers, pending)

    def _promotion_counts(self) -> PromotionCounts:
        st = self.promotions.stats
        return PromotionCounts(promoted=st.promoted, failed=st.failed, bytes_moved=st.bytes_moved)

    def recover(self) -> RecoveryReport:
        """Finish or roll back moves a crash interrupted."""
        return recover_moves(self.catalog, self.tier)

    def tiering_plan(self, *, as_of: date, by: str, store: bool = True,
                     progress: Callable[[int], None] | None = None) -> PlanResult:
        """The cooling-days moves alone, as a plan (ilm tiering run): planned with a
        policy without rules, so apply, --resume and the audit work on it unchanged."""
        with self.metrics.policy_run("plan"):
            return make_plan(self.catalog, self.settings, self.read_policy(TIERING_POLICY), as_of=as_of, created_by=by,
                             store=store, progress=progress)

    def tiering_settings(self) -> dict[str, Any]:
        """Each tier's cooling days, retrieval policy and prefetch settings (ilm tiering show)."""
        return tiering_settings(self.settings)

    def scheduled_run(self, *, today: date | None = None) -> tuple[PlanRow, ApplyReport | None]:
        """Plan the configured schedule policy; apply it only when the policy is
        marked auto_apply and contains no expiry rule. Otherwise the plan waits
        for approval (ilm apply)."""
        path = self.settings.lifecycle.schedule_policy
        if not path:
            raise IlmError("no lifecycle.schedule_policy in the configuration")
        source = self.read_policy(self.settings.resolve(path))
        with self.metrics.policy_run("plan"):
            result = make_plan(self.catalog, self.settings, source, as_of=today or date.today(),
                               created_by="ilm-scheduler")
        if not source.policy.may_auto_apply:
            return result.plan, None
        by = f"auto_apply ({source.policy.name})"
        with self.metrics.policy_run("apply"):
            return result.plan, self._counted_moves(
                lambda p: apply_plan(self.catalog, self.settings, self.tier, result.plan.id, source, approved_by=by,
                                     progress=p), None)

    # -- query (C-FIND, QIDO-RS) ----------------------------------------------

    def query(self, level: str, filters: dict[str, str], *, fields: Iterable[str] | None = None,
              limit: int | None = None, offset: int = 0, audit: QueryAudit | None = None) -> list[dict[str, object]]:
        """Patients, studies, series or instances (``level``: PATIENT, STUDY, SERIES,
        IMAGE) of active studies matching ``filters`` (keyword -> DICOM matching
        value), as dicts keyword -> value; see ``ilm.catalog.find`` for the matching.

        A query is not an access (as S3 does not count HEAD or LIST): it
        changes no last access and writes no access log. InvalidQuery for a
        query that cannot run, CatalogError when the catalog fails. ``audit``:
        who asked and the query as received, for the Query audit message.
        """
        archive = {name for name, t in self.settings.tiers.items() if t.archive}
        try:
            with self.catalog.read() as conn:
                rows = find_entities(conn, level, filters, fields=fields, limit=limit, offset=offset,
                                     archive_tiers=archive)
        except InvalidQuery as exc:
            if audit is not None:
                self.atna.queried(audit, failure=str(exc))
            raise
        except SQLAlchemyError as exc:
            if audit is not None:
                self.atna.queried(audit, failure="catalog unavailable")
            raise CatalogError(f"catalog unavailable: {exc.__class__.__name__}") from exc
        if audit is not None:
            self.atna.queried(audit)
        return rows

    def query_attributes(self) -> dict[str, str]:
        """The attributes queries can match and return: keyword -> level (PATIENT ... IMAGE)."""
        return query_attributes()

    # -- restores from archive tiers -------------------------------------------

    def recall(self, study_uids: Iterable[str], by: str) -> list[RestoreStatus]:
        """Request restores of studies from their archive tier (ilm recall, POST
        /api/restores): one status per study. A request for a study being restored
        joins that restore; one for a study restored already keeps its copies longer;
        a study not on an archive tier is 'online'. NotFound for an unknown study
        (nothing is requested), StorageError when its archive store cannot be reached."""
        return restore_flow.request_restores(self.catalog, self.settings, self.tier, study_uids, by, self.clock())

    def restores(self, active_only: bool = True, *, study_uids: Iterable[str] | None = None) -> list[RestoreStatus]:
        """Restores, newest first; with ``study_uids``, the newest of each of those studies."""
        return restore_flow.restore_statuses(self.catalog, self.clock(), active_only=active_only,
                                             study_uids=study_uids)

    def process_restores(self) -> RestoreReport:
        """The restore worker step (ilm serve runs it every second): copy restores
        whose latency has passed, drop restored copies whose days are over."""
        with self._restore_lock:
            return restore_flow.process_restores(self.catalog, self.settings, self.tier, self.clock(),
                                                 workers=self.settings.lifecycle.move_workers)

    # -- fixity (ilm.fixity) -----------------------------------------------------

    def verify(self, *, tier: str | None = None, study_uid: str | None = None, sample_percent: float = 100.0,
               seed: int | None = None, include_archive: bool = False, mb_per_s: float | None = None,
               repair: bool = True, by: str = "ilm-verify",
               on_start: Callable[[int, int], None] | None = None,
               progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Re-read copies and check their SHA-256 against the catalog; mark, audit and
        repair bad or missing ones; write missing replicas (see ilm.fixity.verify)."""
        from ilm.lifecycle.limits import RateLimiter

        rate = self.settings.fixity.verify_mb_per_s if mb_per_s is None else mb_per_s
        return fixity_verify(self.catalog, self.settings, self.tier, tier=tier, study_uid=study_uid,
                             sample_percent=sample_percent, seed=seed, include_archive=include_archive,
                             limiter=RateLimiter(rate), repair=repair, actor=by, on_start=on_start, progress=progress)

    def fixity_status(self) -> FixityStatus:
        """Copies by fixity state, how many are due, and the scrub's progress."""
        return fixity_status(self.catalog, self.settings, self.scrub, self.clock())

    # -- capacity watermarks (ilm.lifecycle.watermark) --------------------------

    def _watermark_policy(self, policy: Path | None) -> PolicySource | None:
        """The policy whose keep rules pin studies: the one given, else lifecycle.schedule_policy."""
        if policy is None and self.settings.lifecycle.schedule_policy:
            policy = self.settings.resolve(self.settings.lifecycle.schedule_policy)
        return self.read_policy(policy) if policy is not None else None

    def watermarks(self, *, tier: str | None = None) -> list[watermark.TierWatermark]:
        """Each tier with a high watermark (or the one named), measured now."""
        return watermark.watermark_status(self.catalog, self.settings, self.tier, tier=tier)

    def watermark_plan(self, *, by: str, tier: str | None = None, policy: Path | None = None,
                       store: bool = True) -> list[watermark.WatermarkPlan]:
        """What a watermark run would do (store=False: a preview), one plan per tier past its high watermark."""
        return watermark.plan_watermarks(self.catalog, self.settings, self.tier, by=by, tier=tier,
                                         policy=self._watermark_policy(policy), store=store)

    def watermark_run(self, *, by: str, tier: str | None = None, policy: Path | None = None,
                      ) -> list[tuple[watermark.WatermarkPlan, ApplyReport | None]]:
        """Plan and apply: every tier past its high watermark sheds its least recently read studies."""
        source = self._watermark_policy(policy)
        out: list[tuple[watermark.WatermarkPlan, ApplyReport | None]] = []
        for wp in watermark.plan_watermarks(self.catalog, self.settings, self.tier, by=by, tier=tier, policy=source):
            report = None
            if wp.plan is not None:
                plan_id = wp.plan.id
                report = self._counted_moves(
                    lambda p: watermark.apply_watermark_plan(self.catalog, self.settings, self.tier, plan_id,
                                                             policy=source, approved_by=by, progress=p), None)
            out.append((wp, report))
        self.metrics.watermark_runs.inc()
        return out

    # -- API tokens and roles (ilm.security) ------------------------------------

    def token_create(self, name: str, role: str, *, expires: Period | None, by: str) -> tuple[TokenRow, str]:
        """A new API token: its row and the token, shown once (only its SHA-256 is kept)."""
        return self._tokens.create(name, role, expires=expires, by=by)

    def tokens(self, *, include_revoked: bool = False) -> list[TokenRow]:
        return self._tokens.rows(include_revoked=include_revoked)

    def token_revoke(self, ref: str, *, by: str) -> list[TokenRow]:
        """Revoke the token with ID ``ref``, or the tokens named ``ref`` (NotFound: none)."""
        return self._tokens.revoke(ref, by=by)

    def authenticate(self, token: str, *, address: str = "", sign_in: bool = False) -> Principal:
        """Who presents ``token``: Unauthenticated when it is unknown, revoked or expired.

        A refused token is a failed User Authentication in the DICOM audit messages (from
        ``address``; named by the token's name when it is known, never by the token). With
        ``sign_in`` (the dashboard's sign-in), a success is one too; the API's per-request
        checks are not (one message per request would drown the log)."""
        try:
            who = self._tokens.authenticate(token)
        except Unauthenticated as exc:
            self.atna.authentication(exc.token_name or "unknown", address, failure=str(exc))
            raise
        if sign_in:
            self.atna.authentication(who.name, address)
        return who

    def refused(self, who: Principal, need: str, *, address: str = "", subject: str = "") -> None:
        """A valid token used for what its role does not allow: a Security Alert (Use of
        Restricted Function) in the DICOM audit messages. The caller answers 403."""
        self.atna.security_alert(atna_messages.RESTRICTED_FUNCTION, who.name, address, subject=subject,
                                 failure=f"token {who.name!r} ({who.role.label}) needs {need}")

    def association_refused(self, calling_aet: str, host: str, why: str) -> None:
        """A DICOM association refused by ``[dicom] allowed_calling_aets/allowed_hosts``: a
        Security Alert (Node Authentication) in the DICOM audit messages."""
        self.atna.security_alert(atna_messages.NODE_AUTHENTICATION, calling_aet.strip(), host,
                                 subject=f"dicom://{self.settings.dicom.ae_title}", failure=why, ae_title=True)

    # -- master keys of encrypted tiers (ilm.encryption, docs/security.md) ------------

    def check_encryption(self) -> list[str]:
        """Open every encrypted tier now, so that a key ring that cannot encrypt (missing,
        readable by others, no active key) is a ConfigError at start; their names."""
        names = [n for n, t in self.settings.tiers.items() if t.encryption == "envelope"]
        for n in names:
            self.tier(n)
        return names

    def keys_list(self, *, tier: str | None = None) -> tuple[list[encryption.KeyInfo], dict[str, int]]:
        return encryption.list_keys(self.catalog, self.settings, tier=tier)

    def keys_new(self, *, key_id: str | None = None, tier: str | None = None, key_file: Path | None = None,
                 by: str = "") -> tuple[Path, encryption.MasterKey]:
        return encryption.new_key(self.settings, key_id=key_id, tier=tier, key_file=key_file, catalog=self.catalog,
                                  by=by)

    def keys_rotate(self, *, tier: str | None = None, full: bool = False, by: str = "",
                    progress: Callable[[int, int], None] | None = None) -> encryption.RotateReport:
        """Re-wrap every object's data key under the active master key (resumable: run again)."""
        return encryption.rotate(self.catalog, self.settings, self.tier, tier=tier, full=full, by=by,
                                 progress=progress)

    def keys_retire(self, key_id: str, *, by: str = "", key_file: Path | None = None,
                    progress: Callable[[int, int], None] | None = None) -> int:
        """Retire a master key once no object uses it (KeyInUse otherwise)."""
        return encryption.retire(self.catalog, self.settings, self.tier, key_id, by=by, key_file=key_file,
                                 progress=progress)
