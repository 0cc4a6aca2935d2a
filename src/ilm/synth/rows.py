"""Catalog-only synthetic archives: a plan written straight into the catalog.

For scale tests of a million studies and more, where writing files would
take hours: patients, studies (with their counts, sizes, multi-valued facts
and ``last_accessed_at`` from the plan's access history) and series rows go
in through :class:`ilm.catalog.bulk.BulkLoader`, many thousand studies per
transaction. The rows are those an import of the plan's files would write,
except:

- ``received_at`` is the acquisition time plus ten minutes (the archive is
  simulated as having received each study when it was made), not now;
- instance and location rows are written only with ``with_instances``:
  without them the studies are on no tier (see ``ilm.catalog.bulk``). With
  them, each instance gets a location row on ``tier`` that points at an
  object that does not exist and whose ``sha256`` is the placeholder
  :data:`NO_OBJECT_SHA256` (64 zeros): a catalog for planning and query
  tests, not for moving data.

Large plans are loaded by several processes at once, each planning its own
blocks of patients and inserting them (SQLite serialises the inserts, the
planning overlaps). The catalog's content is the same whatever the number
of processes; only the order of row ids differs.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from queue import Empty
from typing import Any

from ilm.catalog import Catalog
from ilm.catalog.access import AccessRow, replay_access_log
from ilm.catalog.bulk import BulkBatch, BulkCounts, BulkLoader, set_last_accessed, set_received
from ilm.synth.plan import StudySpec, SynthConfig, generate_blocks

__all__ = ["load_catalog", "apply_access_history", "replay_accesses", "HISTORY_INTERFACE", "batch_for", "LoadReport", "NO_OBJECT_SHA256", "EXPLICIT_VR_LITTLE_ENDIAN"]

NO_OBJECT_SHA256 = "0" * 64
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_RECEIVED_AFTER = timedelta(minutes=10)
HISTORY_INTERFACE = "history"  # access_log.interface of replayed synthetic reads


@dataclass
class LoadReport(BulkCounts):
    workers: int = 0


def _join(values: Iterable[str]) -> str:
    return "\\".join(sorted({v for v in values if v}))


def batch_for(specs: Iterable[StudySpec], *, with_instances: bool = False, tier: str = "") -> BulkBatch:
    """The catalog rows of ``specs`` as one bulk batch (column orders of ilm.catalog.bulk)."""
    b = BulkBatch(tier=tier)
    pats = b.patients
    study_rows = b.studies
    series_rows = b.series
    inst_rows = b.instances
    for s in specs:
        p = s.patient
        key = (p.patient_id, p.issuer)
        if key not in pats:
            # What an import would parse: no birth date when the text is missing or garbled.
            d = p.birth_date
            valid = p.birth_date_raw == f"{d.year:04d}{d.month:02d}{d.day:02d}"
            pats[key] = (p.name, p.birth_date if valid else None, p.birth_date_raw, p.sex)
        received = s.acquired_at + _RECEIVED_AFTER
        study_date = s.study_date if s.study_date_raw else None
        ser = s.series
        if len(ser) == 1:
            x = ser[0]
            stations, makers, modalities, sops, parts = (
                x.station_name, x.manufacturer, x.modality, x.sop_class_uid, x.body_part)
            n_inst = x.instance_count
            size = x.instance_count * x.instance_bytes
        else:
            stations = _join([x.station_name for x in ser])
            makers = _join([x.manufacturer for x in ser])
            modalities = _join([x.modality for x in ser])
            sops = _join([x.sop_class_uid for x in ser])
            parts = _join([x.body_part for x in ser])
            n_inst = sum(x.instance_count for x in ser)
            size = sum(x.instance_count * x.instance_bytes for x in ser)
        uid = s.study_uid
        study_rows.append((
            key, uid, study_date, s.study_date_raw, s.study_time, s.accession_number, s.description, s.study_id,
            s.referring_physician, s.institution, stations, makers, modalities, sops, parts, s.patient_age,
            False, len(ser), n_inst, size, "active", received, received,
            s.accesses[-1] if s.accesses else None, tier,
        ))
        for x in ser:
            series_rows.append((
                uid, x.series_uid, x.modality, x.description, x.number, x.body_part, x.station_name, study_date,
                x.instance_count, x.instance_count * x.instance_bytes,
            ))
            if with_instances:
                prefix = f"{uid}/{x.series_uid}/"
                for i in range(1, x.instance_count + 1):
                    sop = f"{x.series_uid}.{i}"
                    inst_rows.append((
                        x.series_uid, f"{prefix}{sop}.dcm", sop, x.sop_class_uid, EXPLICIT_VR_LITTLE_ENDIAN, i,
                        x.instance_bytes, NO_OBJECT_SHA256, received,
                    ))
    return b


def _load_part(
    loader: BulkLoader, config: SynthConfig, part: int, parts: int, chunk: int, with_instances: bool, tier: str,
    report: Callable[[BulkCounts], None], lock: Any = None,
) -> None:
    """Plan blocks part, part + parts, ... and load them, about ``chunk`` studies per transaction.

    ``lock`` (shared by the loader processes) hands the database from one
    loader to the next as soon as it commits; SQLite's own busy wait would
    poll and sleep up to 100 ms.
    """

    def load(b: BulkBatch) -> BulkCounts:
        if lock is None:
            return loader.load(b)
        with lock:
            return loader.load(b)

    pending: BulkBatch | None = None
    for block in generate_blocks(config, part, parts):
        b = batch_for(block, with_instances=with_instances, tier=tier)
        if pending is None:
            pending = b
        else:
            pending.extend(b)
        if len(pending.studies) >= chunk:
            report(load(pending))
            pending = None
    if pending is not None:
        report(load(pending))


def _worker(url: str, config: SynthConfig, part: int, parts: int, chunk: int, with_instances: bool, tier: str,
            queue: Any, lock: Any) -> None:
    """A loader process: its own engine; counts, then None (or the error) on ``queue``."""
    try:
        catalog = Catalog.open(url, upgrade=False)
        try:
            _load_part(BulkLoader(catalog), config, part, parts, chunk, with_instances, tier, queue.put, lock)
        finally:
            catalog.close()
        queue.put(None)
    except BaseException as exc:
        queue.put(RuntimeError(f"loader {part}: {type(exc).__name__}: {exc}"))


def load_catalog(
    catalog: Catalog,
    config: SynthConfig,
    *,
    with_instances: bool = False,
    tier: str = "",
    chunk: int = 10_000,
    progress: Callable[[BulkCounts], None] | None = None,
    workers: int | None = None,
) -> LoadReport:
    """Write the plan of ``config`` into ``catalog``, about ``chunk`` studies per transaction.

    ``workers`` loader processes (default: one per CPU, at most 4, for plans
    of 20,000 studies and more; 0 loads in this process) share the blocks
    of the plan. ``progress`` gets the counts of each committed
    transaction. Studies already in the catalog are skipped, so an
    interrupted load can be run again.
    """
    if with_instances and not tier:
        raise ValueError("with_instances needs the tier the locations point at")
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if config.studies >= 20_000 else 0
    report = LoadReport(workers=workers)

    def count(c: BulkCounts) -> None:
        report.add(c)
        if progress:
            progress(c)

    if workers <= 1:
        _load_part(BulkLoader(catalog), config, 0, 1, chunk, with_instances, tier, count)
        return report
    url = catalog.engine.url.render_as_string(hide_password=False)
    catalog.engine.dispose()   # no open database connection may be inherited by a child
    # fork: the loaders need nothing but the config and must not re-run the caller's main module.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx: Any = multiprocessing.get_context(method)
    queue = ctx.Queue()
    lock = ctx.Lock()
    procs = [ctx.Process(target=_worker, args=(url, config, w, workers, chunk, with_instances, tier, queue, lock),
                         daemon=True) for w in range(workers)]
    for p in procs:
        p.start()
    try:
        running = workers
        while running:
            try:
                item = queue.get(timeout=1.0)
            except Empty:
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise RuntimeError(f"a loader process exited with code {dead[0].exitcode}") from None
                continue
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                count(item)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    return report


def apply_access_history(catalog: Catalog, specs: Iterable[StudySpec], *, log: bool = True) -> int:
    """Set ``last_accessed_at`` of the plan's studies already in ``catalog`` from
    their access histories (a newer value already recorded is kept). Returns the
    number of studies changed. Also moves ``received_at`` back to when the
    study would have arrived, so that the archive looks its age to policies,
    and (``log``) writes the reads into the access log (:func:`replay_accesses`)
    so that reads by study age can be measured."""
    specs = list(specs)
    set_received(catalog, {s.study_uid: s.acquired_at + _RECEIVED_AFTER for s in specs})
    changed = set_last_accessed(catalog, {s.study_uid: s.accesses[-1] for s in specs if s.accesses})
    if log:
        replay_accesses(catalog, specs)
    return changed


def replay_accesses(catalog: Catalog, specs: Iterable[StudySpec]) -> int:
    """Write every read of the plan's access histories into the access log (interface
    ``history``, each read of the whole study), once per catalog. Returns the rows written."""
    rows = [AccessRow(at, s.study_uid, HISTORY_INTERFACE, "ilm synth", sum(x.instance_count for x in s.series))
            for s in specs for at in s.accesses]
    with catalog.write() as conn:
        return replay_access_log(conn, rows)
